"""A postprocessor advertised through the ``openood_ext.postprocessors`` entry-point group."""

from openood_ext.postprocessors import Postprocessor


class DemoMaxLogit(Postprocessor):
    """Demo: conf = max logit + offset."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def score(self, outputs):
        return (outputs.logits.double().max(dim=1).values + self.offset).numpy()
