"""`segops prepare` without the Beam plumbing: options, per-pair analysis, class statistics,
class weights, U-Net weight maps, the output layout and manifest, and the run summary. The
pipeline graph that runs them is :mod:`workflows.prepare`."""
