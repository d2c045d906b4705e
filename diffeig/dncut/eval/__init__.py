"""The evaluation room: benchmark datasets, metrics, the post-processing of eigenvectors
(Simple, TokenCut, the bilateral solver), feature extraction, the saliency and object
discovery commands (:mod:`~diffeig.dncut.eval.evaluate`) and figures
(:mod:`~diffeig.dncut.eval.visualize`). Modules are imported on use: nothing here."""
