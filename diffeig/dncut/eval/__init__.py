"""The evaluation room: benchmark datasets, metrics, the post-processing of eigenvectors
(Simple, TokenCut, the bilateral solver), feature extraction, the saliency and object
discovery commands (:mod:`~diffeig.dncut.eval.evaluate`), figures
(:mod:`~diffeig.dncut.eval.visualize`), MaskCut (:mod:`~diffeig.dncut.eval.maskcut`), its
dataset command (:mod:`~diffeig.dncut.eval.pseudo_masks`) and instance metrics
(:mod:`~diffeig.dncut.eval.instances`). Modules are imported on use: nothing here."""
