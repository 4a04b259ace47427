"""What every stage shares: output names (layout), file access (fs), the label table, image
validation and codecs, the TFRecord schema, numpy metrics, dead letters and the options error."""
