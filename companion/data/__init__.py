"""Data with ground truth: generators (shapes, video, sequences, chat) and loaders of prepared real data.

``images`` (shape scenes, Fashion-MNIST), ``video`` (captioned clips of moving shapes), ``sequences``
(associative recall, retrieval, digit tasks, a character corpus), ``chat`` (a chat corpus with system
prompts); ``files`` finds prepared datasets and raises :class:`DataError` naming the command that prepares one.
``natural`` (crops of the photos shipped with scikit-image and scikit-learn; Fashion-MNIST at 32 px; the MIM
pretraining mix), ``landcover`` (six-band multi-label mosaics), ``clicks`` (click maps and click simulators for
interactive segmentation), ``scenes`` (captioned 16×16 shape scenes for text-to-image), ``camera`` (a
camera-like Poisson–Gaussian, spatially and channel-correlated noise model), ``speech`` (spoken words from
espeak-ng with text, voice, pitch and speed; cached on disk), ``sounds`` (noises, bursts, chirps, chords, babble,
mixing at an SNR), ``refer`` (32×32 referring scenes: 2–6 named objects plus clutter, instance masks, captions,
referring expressions with targets, unseen colour × shape classes, depth of field, a shifted domain), ``words``
(the captions' word tokenizer), ``filters`` (the one Gaussian blur). The image API is re-exported
here: ``data.make_shapes``, ``data.load_fashion_mnist``, ``data.natural_crops``, ``data.fashion32``,
``data.mim_corpus``.
"""

from . import camera, clicks, filters, foreground, landcover, refer, scenes, sounds, speech, words
from .files import PREPARE, DataError, available, data_root, require
from .images import FASHION_CLASSES, SHAPE_CLASSES, ImageSet, load_fashion_mnist, make_shapes
from .natural import fashion32, mim_corpus, natural_crops

__all__ = ["DataError", "PREPARE", "available", "data_root", "require", "FASHION_CLASSES", "SHAPE_CLASSES",
           "ImageSet", "load_fashion_mnist", "make_shapes", "camera", "clicks", "foreground", "landcover", "scenes",
           "sounds", "speech", "refer", "words", "filters",
           "natural_crops",
           "fashion32", "mim_corpus"]
