"""The train and test steps of the models trained on one total loss (the extractor, the
embedders, the concat baselines): written once here, each model supplies its losses."""

import keras
import tensorflow as tf

from flam_tf.distribute import scaled_loss


class LossTrackingModel(keras.Model):
    """A keras.Model whose `fit` minimises `compute_losses(data, training)["loss"]` and reports
    the running mean of every loss it tracks.

    A subclass calls `track_losses(names)` in its constructor ("loss", the total, first) and
    implements `compute_losses(data, training) -> {name: scalar}`, with at least every tracked
    name. The step scales the loss for the replicas of a tf.distribute strategy
    (`distribute.scaled_loss`) and updates every trainable variable.
    """

    def track_losses(self, names):
        """Creates one running-mean metric per loss name, in the order the logs show them."""
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in names]

    @property
    def metrics(self):
        return list(self.loss_trackers)

    def compute_losses(self, data, training):
        raise NotImplementedError

    def update_loss_trackers(self, losses):
        """Adds this step's `losses` to the trackers; returns the logs of `fit`."""
        for tracker in self.metrics:
            tracker.update_state(losses[tracker.name])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True)
            replica_loss = scaled_loss(losses["loss"])
        variables = self.trainable_variables
        grads = tape.gradient(replica_loss, variables)
        self.optimizer.apply(grads, variables)
        return self.update_loss_trackers(losses)

    def test_step(self, data):
        return self.update_loss_trackers(self.compute_losses(data, training=False))
