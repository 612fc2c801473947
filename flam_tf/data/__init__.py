"""Where data enters: manifests, the synthetic benchmark, real data set readers, tf.data input."""
