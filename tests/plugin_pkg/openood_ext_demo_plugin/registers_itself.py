"""An entry point naming a module: importing it registers its parts."""

from openood_ext.postprocessors import POSTPROCESSORS, Postprocessor


@POSTPROCESSORS.register("demo_feature_norm")
class DemoFeatureNorm(Postprocessor):
    """Demo: conf = L2 norm of the penultimate features."""

    def score(self, outputs):
        return outputs.features.double().norm(dim=1).numpy()
