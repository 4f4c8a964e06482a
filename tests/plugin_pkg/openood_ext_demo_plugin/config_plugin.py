"""Loaded through a config's ``plugins:`` list (not an entry point)."""

from openood_ext.postprocessors import POSTPROCESSORS, Postprocessor


@POSTPROCESSORS.register("demo_neg_msp")
class DemoNegMSP(Postprocessor):
    """Demo: conf = -max softmax (deliberately inverted)."""

    def score(self, outputs):
        return (-outputs.logits.double().softmax(dim=1).max(dim=1).values).numpy()
