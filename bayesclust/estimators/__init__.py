"""The user API: thin scikit-learn-style estimators on one base (:mod:`._base`)."""

from .contrastive import ContrastiveClustering
from .dpgmm import DPGMM
from .dti import DTIGMM, DTIKMeans
from .entropy import EntropyClustering
from .gaussian_mixture import GaussianMixture

__all__ = ["ContrastiveClustering", "DPGMM", "DTIGMM", "DTIKMeans", "EntropyClustering", "GaussianMixture"]
