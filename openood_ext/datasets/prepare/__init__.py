"""``openood-ext data prepare``: turn published archives (downloaded or local) into images + image lists.

Layout, the same as an OpenOOD data directory so either can stand in for the other::

    <root>/images_classic/<set>/...          images (cifar10/train/airplane/0000.jpg, mnist/test/7/00000.png)
    <root>/images_largescale/<set>/...       ImageNet-scale sets (only ever linked, never converted here)
    <root>/benchmark_imglist/<benchmark>/    image lists written for exactly the images that are there
    <root>/downloads/<set>/                  published archives (fetched, or put there by hand)

Inputs (``--from``) are recognised by content, not by command-line flags:

* a tar (any compression) of ``<set>/<split>/<class>/<file>`` images, like ``../shared/data/*.tar``:
  its members are streamed straight to disk, never decoded or re-encoded;
* the published archives: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (decoded to PNG,
  numbered 1-based per class like OpenOOD), ``dtd-r1.0.1.tar.gz`` (streamed), SVHN's ``test_32x32.mat``;
* a directory of MNIST-format idx files (``/usr/share/datasets/fashion-mnist``): MNIST or Fashion-MNIST,
  told apart by checksum;
* a directory named after a set (``.../images_classic/tin``), or an OpenOOD data directory: linked, and
  the OpenOOD image lists of the benchmark are copied next to the data.

Image lists of sets we can enumerate are generated deterministically (sorted paths, seeded hold-outs);
lists that only OpenOOD can define (its filtered Tiny-ImageNet and Places365 subsets) come from an
OpenOOD data directory or are reported absent, and ``test_ood`` skips those sets.

Modules, one job each: :mod:`.archives` (ingestion), :mod:`.lists` (image-list definitions),
:mod:`.orchestrate` (the ``prepare`` entry point), :mod:`.mvtec` (MVTec-AD's own layout), :mod:`.report` (what a preparation did).
"""

from .archives import (IMAGE_DIR, LARGE_IMAGE_DIR, check_class_counts, extract_image_archive, images_under,
                       ingest, link_set, unfinished_extractions)
from .lists import BENCHMARK_LISTS, ListSpec, format_imglist, write_imglists
from .orchestrate import prepare
from .report import PrepareReport

__all__ = ["BENCHMARK_LISTS", "IMAGE_DIR", "LARGE_IMAGE_DIR", "ListSpec", "PrepareReport", "check_class_counts",
           "extract_image_archive", "format_imglist", "images_under", "ingest", "link_set", "prepare",
           "unfinished_extractions", "write_imglists"]
