"""Apache Beam pipelines: each a ``build_<stage>_pipeline(p, options)`` function plus its DoFns."""
