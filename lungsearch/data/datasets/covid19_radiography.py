"""COVID-19 Radiography Database (Kaggle; paper 2's dataset): ``<root>/<Class>/images/*.png``
(v4+) or ``<root>/<Class>/*.png``; classes COVID, Lung_Opacity, Normal, "Viral Pneumonia".

The dataset has no patient identifiers, so each image is its own split group (as the paper
splits it). Case ids are the file stems (public dataset ids such as ``COVID-1``).
"""

from __future__ import annotations

from lungsearch.data.datasets.folder import FolderAdapter

__all__ = ["Covid19RadiographyAdapter"]


class Covid19RadiographyAdapter(FolderAdapter):
    name = "covid19-radiography"
    description = "COVID-19 Radiography Database: <root>/<COVID|Lung_Opacity|Normal|Viral Pneumonia>/[images/]*.png"
    hash_ids = False
