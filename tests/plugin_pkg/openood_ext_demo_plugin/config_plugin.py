"""Loaded through a config's ``plugins:`` list (not an entry point)."""

from openood_ext.postprocessors import POSTPROCESSORS, Postprocessor


@POSTPROCESSORS.register("demo_neg_msp")
class DemoNegMSP(Postprocessor):
    """Demo: conf = -max softmax (deliberately inverted)."""

    def score(self, outputs):
        return (-outputs.logits.double().softmax(dim=1).max(dim=1).values).numpy()


@POSTPROCESSORS.register("demo_nan")
class DemoNaN(Postprocessor):
    """Demo: a broken method whose scores contain NaN."""

    def score(self, outputs):
        conf = outputs.logits.double().max(dim=1).values.numpy().copy()
        conf[::3] = float("nan")
        return conf
