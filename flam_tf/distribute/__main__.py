"""`python -m flam_tf.distribute slurm|kubernetes`: prints this task's TF_CONFIG."""

from flam_tf.distribute.resolvers import _main

if __name__ == "__main__":
    _main()
