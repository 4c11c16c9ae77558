"""Image processor reproducing the original EAGLE preprocessing exactly.

The original (``eagle/mm_utils.py`` ``process_images`` with ``image_aspect_ratio="pad"`` followed by a
``CLIPImageProcessor``) does, per image:

1. ``expand2square``: paste the image centred on a square canvas of side ``max(w, h)`` at offset
   ``((side - w) // 2, (side - h) // 2)``, filled with ``tuple(int(255 * m) for m in image_mean)``;
2. resize so that the shortest edge is ``size`` with PIL bicubic on the uint8 image (the long edge
   becomes ``int(size * long / short)``);
3. centre crop ``crop_size`` (top/left offsets ``(H - h) // 2``, ``(W - w) // 2``);
4. rescale ``float32(float64(u8) * (1/255))``;
5. normalise ``(x - mean) / std`` in float32.

Resizing is done by PIL on uint8 data because that is what the original did; a float or torchvision
resize differs by one grey level at some pixels, which moves CLIP features noticeably. That is why the
default processor, `EagleImageProcessor`, derives from the PIL backend (``PilBackend``), which
transformers' convention names ``...Pil``: here the PIL class keeps the plain name because it is the
default for exact parity. `EagleImageProcessorTorchvision` (``TorchvisionBackend``) runs the same steps
on tensors (optionally on a GPU, batched per image shape), within one uint8 level of the PIL one.

Input conversion rules (every input ends up as an 8-bit RGB ``PIL.Image`` before step 1):

* PIL images: ``I;16*`` and ``I`` (Pillow's modes for 16-bit greyscale PNG/TIFF) are scaled to 8 bit
  with ``round(v / 257)`` after clipping to ``0..65535`` (Pillow's own conversion would clip, turning
  most of a 16-bit image white). Every other mode goes through ``Image.convert("RGB")`` like the original
  code: RGBA/LA/PA **drop the alpha channel** (no compositing, the colour under transparent pixels is
  kept; this is what the released models were trained with), CMYK/YCbCr/L/P/1 use Pillow's
  conversions; mode ``F`` (32-bit float) follows the rule of float arrays below (values in ``[0, 1]``). EXIF orientation is not applied (the original did not either).
* numpy arrays and torch tensors: 2-D ``(H, W)`` greyscale or 3-D with a channel axis of size 1, 3 or 4
  (first or last; when both ends could be channels, numpy is read as ``HWC`` and torch as ``CHW``);
  4 channels are RGBA (alpha dropped). 4-D inputs are batches. dtypes: ``uint8`` as is, ``bool`` →
  0/255, ``uint16`` → ``round(v / 257)``, other integers must lie in ``0..255``, floats must lie in
  ``[0, 1]`` and become ``round(v * 255)``.
* ``str`` / ``os.PathLike``: a file path (``http(s)://`` and ``data:`` URLs are fetched with
  transformers' ``load_image``); ``bytes``: encoded image data.

Invalid inputs raise ``ValueError`` naming the problem (a missing file: `ImageFileNotFoundError`, also a
``FileNotFoundError``): missing, unreadable or truncated files, empty images,
images smaller than 2 pixels on a side, unsupported channel counts or value ranges.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import center_crop as _center_crop
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

try:
    import torch
except ImportError:  # torch is optional for the image processor itself
    torch = None


__all__ = ["EagleImageProcessor", "EagleImageProcessorTorchvision", "EagleImageProcessorKwargs", "flatten_images",
           "ImageFileNotFoundError", "load_image_rgb"]

MIN_IMAGE_SIDE = 2
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class EagleImageProcessorKwargs(ImagesKwargs, total=False):
    """``pad_to_square``: paste the image on a square canvas of the mean colour before resizing
    (the original ``image_aspect_ratio="pad"``; ``False`` reproduces the stage-1 pre-training crop)."""

    pad_to_square: bool | None


# --------------------------------------------------------------------------------------------------
# Input handling


def _is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _is_single_image(x: Any) -> bool:
    if isinstance(x, (Image.Image, str, bytes, os.PathLike)):
        return True
    if isinstance(x, np.ndarray) or _is_tensor(x):
        return x.ndim <= 3
    return False


def flatten_images(images: Any) -> list[Any]:
    """All images of a (possibly nested) list in order; 4-D arrays/tensors count as batches."""
    if images is None:
        return []
    if _is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray) or _is_tensor(images):
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"expected an image array with 2 to 4 dimensions, got shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        flat: list[Any] = []
        for item in images:
            flat.extend(flatten_images(item))
        return flat
    raise TypeError(
        f"unsupported image type {type(images).__name__}; expected a PIL image, numpy array, torch tensor, "
        "file path, bytes, or a list of these"
    )


class ImageFileNotFoundError(FileNotFoundError, ValueError):
    """A missing image file: a `FileNotFoundError`, and a `ValueError` like every other bad image."""


def one_line(message: object) -> str:
    """Collapse a (possibly multi-line) message into one line, for errors and the CLI."""
    return " ".join(str(message).split())


def _open_image_file(path: str, label: str | None = None) -> Image.Image:
    """The one place an image file or URL is opened (processor, training data, evaluation, chat,
    demo and server all come through `load_image_rgb`). ``label``: how messages call the file."""
    label = label or path
    if path.startswith(("http://", "https://", "data:")):
        from transformers.image_utils import load_image

        try:
            return load_image(path)
        except Exception as err:  # network and decoding errors all mean "could not read this image"
            raise ValueError(f"could not load image from {label[:200]!r}: {one_line(err)}") from err
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ImageFileNotFoundError(f"image {label} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"image {label} is a folder, not an image file")
    return _decode(lambda: Image.open(path), label)


def _open_image_bytes(data: bytes) -> Image.Image:
    return _decode(lambda: Image.open(io.BytesIO(data)), "the image bytes")


def _decode(open_image, label: str) -> Image.Image:
    try:
        image = open_image()
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"{label} is not an image file that can be read (PNG, JPEG, WebP, ... expected)") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"{label} is too large to open safely: {one_line(err)}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{label} could not be read as an image (damaged or truncated file: "
                         f"{one_line(err)})") from None
    return image


def _check_size(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise ValueError(f"empty image: size {width}x{height} has no pixels")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image too small: {width}x{height} pixels; every side must be at least {MIN_IMAGE_SIDE} pixels"
        )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if dtype == np.uint16:
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer image values must lie in 0..255 (pass uint16 data for 16-bit images); got {dtype} "
                f"values in [{lo}, {hi}]"
            )
        return array.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError("float image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        tolerance = 0.5 / 255
        if lo < -tolerance or hi > 1 + tolerance:
            raise ValueError(
                f"float images must have values in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
                "(convert 0..255 data to uint8 first)"
            )
        return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {dtype}")


def _array_to_pil(array: np.ndarray, channels_first_preferred: bool) -> Image.Image:
    if array.ndim == 2:
        hwc = array[:, :, None]
    elif array.ndim == 3:
        first_ok, last_ok = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first_ok and (channels_first_preferred or not last_ok):
            hwc = np.moveaxis(array, 0, -1)
        elif last_ok:
            hwc = array
        else:
            raise ValueError(
                f"wrong number of channels: image array of shape {tuple(array.shape)} has no channel axis of size "
                "1, 3 or 4 (expected (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4})"
            )
    else:
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {tuple(array.shape)}")
    _check_size(hwc.shape[1], hwc.shape[0])
    hwc = np.ascontiguousarray(_to_uint8(hwc))
    channels = hwc.shape[-1]
    if channels == 1:
        return Image.fromarray(hwc[:, :, 0], mode="L").convert("RGB")
    if channels == 3:
        return Image.fromarray(hwc, mode="RGB")
    # Four channels are RGBA; dropping alpha matches PIL's RGBA -> RGB conversion used for PIL inputs.
    return Image.fromarray(np.ascontiguousarray(hwc[:, :, :3]), mode="RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    _check_size(*image.size)
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        # Float images follow the rule of float arrays ([0, 1]); Pillow's own conversion would read
        # them as 0..255 and turn a [0, 1] image almost black.
        try:
            return _array_to_pil(np.asarray(image), channels_first_preferred=False)
        except ValueError as err:
            raise ValueError(f"PIL image of mode 'F': {err}; for 0..255 data use image.convert('L')") from None
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        values = np.clip(values, 0, 65535)
        eight_bit = np.round(values / 257.0).astype(np.uint8)
        return Image.fromarray(eight_bit, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert image of mode {image.mode!r} to RGB: {err}") from err


def load_image_rgb(image: Any, channels_first: bool | None = None, name: str | None = None) -> Image.Image:
    """Convert one supported input (see module docstring) to an 8-bit RGB PIL image, with checks.
    ``name``: how to call a file in error messages (default: the path as given)."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(os.fspath(image), name)
    elif isinstance(image, bytes):
        image = _open_image_bytes(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if _is_tensor(image):
        tensor = image.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        prefer_first = True if channels_first is None else channels_first
        return _array_to_pil(tensor.numpy(), channels_first_preferred=prefer_first)
    if isinstance(image, np.ndarray):
        prefer_first = False if channels_first is None else channels_first
        return _array_to_pil(image, channels_first_preferred=prefer_first)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, numpy array, torch tensor, "
        "file path or bytes"
    )


def _channels_first_hint(input_data_format: Any) -> bool | None:
    if input_data_format is None:
        return None
    return ChannelDimension(input_data_format) == ChannelDimension.FIRST


# --------------------------------------------------------------------------------------------------
# Image processor


class EagleImageProcessingMixin:
    """What both backends share: the defaults, the keyword rules, input conversion (every input becomes
    an 8-bit RGB PIL image, see the module docstring) and the exact rescale/normalise value table."""

    valid_kwargs = EagleImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 1024}
    default_to_square = False
    crop_size = {"height": 1024, "width": 1024}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = False
    pad_to_square = True

    def __init__(self, **kwargs: Unpack[EagleImageProcessorKwargs]):
        kwargs = self._crop_follows_size(kwargs)
        super().__init__(**kwargs)

    @staticmethod
    def _crop_follows_size(kwargs: dict[str, Any]) -> dict[str, Any]:
        # `size=336` alone must give 336x336 outputs, as the CLIP processor of the original single-tower
        # models did; otherwise the default 1024 crop would silently pad.
        size = kwargs.get("size")
        if size is not None and kwargs.get("crop_size") is None:
            if isinstance(size, int):
                kwargs["crop_size"] = {"height": size, "width": size}
            elif isinstance(size, (dict, SizeDict)):
                size = dict(size)
                if size.get("shortest_edge"):
                    edge = size["shortest_edge"]
                    kwargs["crop_size"] = {"height": edge, "width": edge}
                elif size.get("height") and size.get("width"):
                    kwargs["crop_size"] = {"height": size["height"], "width": size["width"]}
        return kwargs

    def preprocess(self, images, *args, **kwargs: Unpack[EagleImageProcessorKwargs]) -> BatchFeature:
        """Preprocess an image or a batch of images into ``pixel_values`` ``[N, 3, crop, crop]``."""
        kwargs = self._crop_follows_size(kwargs)
        return super().preprocess(images, *args, **kwargs)

    def fetch_images(self, image_url_or_urls: Any):
        """Loads URLs and paths; everything else is returned unchanged (conversion happens later)."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(x) for x in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike, bytes)):
            return load_image_rgb(image_url_or_urls)
        return image_url_or_urls

    # The base class flattens with `make_flat_list_of_images`, which rejects paths and 2-D arrays;
    # inputs are converted here with the rules of the module docstring instead.
    def _preprocess_image_like_inputs(self, images: Any, *args, **kwargs) -> BatchFeature:
        hint = _channels_first_hint(kwargs.get("input_data_format"))
        rgb_images = [load_image_rgb(image, channels_first=hint) for image in flatten_images(images)]
        if not rgb_images:
            raise ValueError("no images were given to the image processor")
        return self._preprocess(self._from_rgb(rgb_images, kwargs.get("device")), *args, **kwargs)

    def _from_rgb(self, images: list[Image.Image], device: Any = None) -> list[Any]:
        return images

    @staticmethod
    def _resize_target(width: int, height: int, size: SizeDict) -> tuple[int, int]:
        """(height, width) after resizing, with transformers' shortest-edge arithmetic."""
        if size.shortest_edge:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        if size.height and size.width:
            return size.height, size.width
        raise ValueError(f"size must contain 'shortest_edge' or both 'height' and 'width', got {dict(size)}")

    @staticmethod
    def _background(image_mean: float | Iterable[float]) -> tuple[int, int, int]:
        mean = [image_mean] * 3 if isinstance(image_mean, (int, float)) else list(image_mean)
        return tuple(int(m * 255) for m in mean)

    def square_uint8(self, image: Any, **kwargs: Unpack[EagleImageProcessorKwargs]) -> np.ndarray:
        """The padded, resized and cropped uint8 ``(H, W, 3)`` image, i.e. everything before rescaling.

        Useful to compare with the original's ``<case>.preprocessed.png`` exactly.
        """
        kwargs = self._crop_follows_size(kwargs)
        opts = {name: kwargs.get(name, getattr(self, name, None)) for name in self._valid_kwargs_names}
        opts = self._standardize_kwargs(**opts)
        hint = _channels_first_hint(opts.get("input_data_format"))
        (converted,) = self._from_rgb([load_image_rgb(image, channels_first=hint)])
        square = self._square_uint8(
            converted,
            pad_to_square=bool(opts["pad_to_square"]),
            do_resize=bool(opts["do_resize"]),
            size=opts["size"],
            resample=opts["resample"],
            do_center_crop=bool(opts["do_center_crop"]),
            crop_size=opts["crop_size"],
            image_mean=opts["image_mean"],
        )
        return square if isinstance(square, np.ndarray) else square.permute(1, 2, 0).cpu().numpy()

    def _preprocess(
        self,
        images: list[Any],
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Iterable[float] | None,
        image_std: float | Iterable[float] | None,
        pad_to_square: bool | None = None,
        return_tensors: Any = None,
        data_format: Any = ChannelDimension.FIRST,
        disable_grouping: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Both backends: the uint8 squares (``_squares``: PIL images or [3, H, W] arrays/tensors), then one
        value-table look-up (``_lookup``) for rescale + normalise, so equal uint8 values give bit-identical
        floats."""
        squares = self._squares(
            images, pad_to_square=bool(pad_to_square), do_resize=do_resize, size=size, resample=resample,
            do_center_crop=do_center_crop, crop_size=crop_size, image_mean=image_mean,
            disable_grouping=disable_grouping,
        )
        table = self._value_table(do_rescale, rescale_factor, do_normalize, image_mean, image_std)
        channels_last = data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST
        shapes = {self._chw_shape(square) for square in squares}
        if return_tensors is not None and len(shapes) == 1 and not channels_last:
            # The batch is written in place: no per-image arrays to stack afterwards.
            batch = self._empty((len(squares), *shapes.pop()), squares[0])
            for square, out in zip(squares, batch):
                self._lookup(table, square, out=out)
            return BatchFeature(data={"pixel_values": batch}, tensor_type=return_tensors)
        processed = []
        for square in squares:
            pixels = self._lookup(table, square)
            if channels_last:
                pixels = pixels.transpose(1, 2, 0) if isinstance(pixels, np.ndarray) else pixels.permute(1, 2, 0)
            processed.append(pixels.contiguous() if hasattr(pixels, "contiguous") else np.ascontiguousarray(pixels))
        if return_tensors is not None and len({tuple(p.shape) for p in processed}) == 1:
            processed = np.stack(processed) if isinstance(processed[0], np.ndarray) else torch.stack(processed)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    @staticmethod
    def _value_table(do_rescale, rescale_factor, do_normalize, image_mean, image_std) -> np.ndarray:
        """[3, 256] float32: the rescaled and normalised value of every (channel, uint8 value)."""
        values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, 0)
        if do_rescale:
            # Same arithmetic as the original: the product in float64, then cast to float32.
            table = (values.astype(np.float64) * rescale_factor).astype(np.float32)
        else:
            table = values.astype(np.float32)
        if do_normalize:
            mean = np.broadcast_to(np.asarray(image_mean, dtype=np.float32).reshape(-1, 1), (3, 1))
            std = np.broadcast_to(np.asarray(image_std, dtype=np.float32).reshape(-1, 1), (3, 1))
            table = (table - mean) / std
        return np.ascontiguousarray(table, dtype=np.float32)


# PIL's resampling filters and their support (``src/libImaging/Resample.c``); NEAREST takes another path.
_FILTER_SUPPORT = {PILImageResampling.BOX: 0.5, PILImageResampling.BILINEAR: 1.0, PILImageResampling.HAMMING: 1.0,
                   PILImageResampling.BICUBIC: 2.0, PILImageResampling.LANCZOS: 3.0}


class PaddedSquare(NamedTuple):
    """A resized padded canvas, stored as the only part that is not the padding colour: ``band`` (a PIL
    image) at ``start`` along ``axis`` (0: rows, 1: columns) of a ``height x width`` image of ``fill``."""

    band: Image.Image
    axis: int
    start: int
    height: int
    width: int
    fill: tuple[int, int, int]

    def regions(self) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]:
        """Indices of an ``(H, W, ...)`` array: the padding before the band, the band, the padding after."""
        stop = self.start + self.band.size[1 - self.axis]
        lead = (slice(None),) * self.axis
        return lead + (slice(None, self.start),), lead + (slice(self.start, stop),), lead + (slice(stop, None),)

    def to_array(self) -> np.ndarray:
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        out[...] = self.fill
        out[self.regions()[1]] = np.asarray(self.band)
        return out


@functools.lru_cache(maxsize=64)
def _resized_band(side: int, size_out: int, content: tuple[int, int],
                  support: float) -> tuple[int, int, float, float] | None:
    """Output pixels ``[a, b)`` of PIL's resampling of a ``side``-pixel axis to ``size_out`` that read any
    of the ``content`` input pixels ``[lo, hi)``, and the ``box`` bounds that make PIL compute exactly
    those (``a * scale``, ``b * scale``), or None when PIL's arithmetic would not give them
    bit for bit. Every other output pixel only reads padding, and PIL's 22-bit fixed-point weights sum
    to 2**22 within a few units, so they come out as the padding colour exactly.

    Exactness: PIL computes ``scale = (float)(in1 - in0) / out`` and ``center = in0 + (j + 0.5) * scale``
    with a float32 box (``precompute_coeffs``). Each band pixel's ``center`` (and so its window and
    weights) must equal the full resize's; that holds when ``a * scale`` and ``b * scale`` are exact in
    float32 (for the 1024-pixel release sizes, ``side / 1024`` is dyadic), and it is checked here."""
    scale = side / size_out
    radius = support * max(scale, 1.0)
    lo, hi = content
    reads = [j for j in range(size_out)
             if max(int((j + 0.5) * scale - radius + 0.5), 0) < hi and min(int((j + 0.5) * scale + radius + 0.5), side) > lo]
    a, b = reads[0], reads[-1] + 1
    if (a, b) == (0, size_out):
        return None
    in0, in1 = np.float32(a * scale), np.float32(b * scale)
    band_scale = float(np.float32(in1 - in0)) / (b - a)
    if float(in0) != a * scale or float(in1) != b * scale or band_scale != scale:
        return None
    if any(float(in0) + (j + 0.5) * band_scale != (a + j + 0.5) * scale for j in range(b - a)):
        return None
    return a, b, float(in0), float(in1)


@functools.lru_cache(maxsize=8)
def _pair_tables(table_bytes: bytes) -> tuple[Any, ...]:
    """Per channel, the float32 values of every pair of consecutive uint8 values, as one 8-byte word per
    pair (index: the two bytes read as a little-endian uint16): one gather writes two output pixels.
    torch's ``index_select`` (int32 indices) gathers about 3x faster than ``np.take``, which converts
    its indices to int64 first; numpy is the fallback when torch is absent."""
    table = np.frombuffer(table_bytes, dtype=np.float32).reshape(3, 256)
    pairs = []
    for row in table:
        both = np.empty((256, 256, 2), dtype=np.float32)
        both[:, :, 0] = row[None, :]  # low byte: the first pixel
        both[:, :, 1] = row[:, None]
        words = both.reshape(-1).view(np.float64)
        pairs.append(torch.from_numpy(words) if torch is not None else words)
    return tuple(pairs)


def _lookup_plane(table: np.ndarray, pairs: Any, plane: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = table[plane]`` for a contiguous uint8 plane and a contiguous float32 ``out``."""
    flat, dest = plane.reshape(-1), out.reshape(-1)
    even = flat.size - flat.size % 2
    words, index = dest[:even].view(np.float64), flat[:even].view("<u2")
    if torch is not None and words.ctypes.data % 8 == 0:
        torch.index_select(pairs, 0, torch.from_numpy(index.astype(np.int32)), out=torch.from_numpy(words))
    else:
        np.take(np.asarray(pairs), index.astype(np.intp), out=words)
    if even < flat.size:
        dest[-1] = table[flat[-1]]


class EagleImageProcessor(EagleImageProcessingMixin, PilBackend):
    r"""EAGLE image processor (PIL backend, the default): pad to square, PIL-bicubic shortest-edge resize,
    centre crop, rescale, CLIP normalisation — numerically identical to the original ``process_images``
    (see module docstring). `EagleImageProcessorTorchvision` is the torchvision backend.

    Args:
        pad_to_square (`bool`, defaults to `True`):
            Paste the image centred on a square canvas of the mean colour first (``image_aspect_ratio="pad"``).
        size (`int` or `dict`, defaults to `{"shortest_edge": 1024}`):
            Target of the resize. An int means the shortest edge; when `crop_size` is not given it follows `size`.
        crop_size (`dict`, defaults to `{"height": 1024, "width": 1024}`)
        image_mean / image_std (defaults to the OpenAI CLIP values)
        resample (defaults to `PILImageResampling.BICUBIC`)
    """

    def expand_to_square(self, image: Image.Image, background: tuple[int, ...]) -> Image.Image:
        """The original ``expand2square``: centred paste on a square canvas of ``background`` colour."""
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        canvas = Image.new(image.mode, (side, side), background)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas

    @staticmethod
    def _resize_padded(canvas: Image.Image, content: tuple[int, int], target: tuple[int, int], resample: Any,
                       fill: tuple[int, int, int]) -> PaddedSquare | None:
        """``canvas.resize`` of a padded canvas, bit for bit, with PIL computing only the output rows (or
        columns) that read the pasted image: a 4:3 photo pads a quarter of the canvas, a 16:9 one 44 %."""
        support = _FILTER_SUPPORT.get(PILImageResampling(resample))
        if support is None:
            return None
        side, (width, height), (out_h, out_w) = canvas.width, content, target
        axis = 0 if width > height else 1  # the padded axis: rows above and below, or columns beside
        extent, out_size = (height, out_h) if axis == 0 else (width, out_w)
        lo = (side - extent) // 2
        band = _resized_band(side, out_size, (lo, lo + extent), support)
        if band is None:
            return None
        a, b, start, stop = band
        box = (0, start, side, stop) if axis == 0 else (start, 0, stop, side)
        size = (out_w, b - a) if axis == 0 else (b - a, out_h)
        return PaddedSquare(canvas.resize(size, resample=PILImageResampling(resample), box=box), axis, a, out_h, out_w,
                            fill)

    def _square_image(
        self,
        image: Image.Image,
        pad_to_square: bool,
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_center_crop: bool,
        crop_size: SizeDict,
        image_mean: float | Iterable[float],
    ) -> Image.Image | np.ndarray | PaddedSquare:
        """The square as a PIL image, as a `PaddedSquare` when only the band of the pasted image had to
        be resized, or as an ``(H, W, 3)`` uint8 array when the crop is larger than the image
        (transformers' ``center_crop`` then pads with zeros, which PIL's crop would not do)."""
        content, background = image.size, self._background(image_mean)
        if pad_to_square:
            image = self.expand_to_square(image, background)
        if do_resize:
            height, width = self._resize_target(image.width, image.height, size)
            if (height, width) != (image.height, image.width):
                if image.size != content and (not do_center_crop or (crop_size.height, crop_size.width) == (height, width)):
                    padded = self._resize_padded(image, content, (height, width), resample, background)
                    if padded is not None:
                        return padded
                image = image.resize((width, height), resample=PILImageResampling(resample))
        if not do_center_crop or (crop_size.height, crop_size.width) == (image.height, image.width):
            return image
        if crop_size.height <= image.height and crop_size.width <= image.width:
            # Same offsets as transformers' center_crop: ((H - h) // 2, (W - w) // 2).
            top, left = (image.height - crop_size.height) // 2, (image.width - crop_size.width) // 2
            return image.crop((left, top, left + crop_size.width, top + crop_size.height))
        chw = _center_crop(
            np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)),
            size=(crop_size.height, crop_size.width),
            data_format=ChannelDimension.FIRST,
            input_data_format=ChannelDimension.FIRST,
        )
        return np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.uint8)

    def _square_uint8(self, image: Image.Image, **options) -> np.ndarray:
        square = self._square_image(image, **options)
        if isinstance(square, PaddedSquare):
            return square.to_array()
        return np.ascontiguousarray(np.asarray(square), dtype=np.uint8)

    def _squares(self, images: list[Image.Image], disable_grouping: bool | None = None,
                 **options) -> list[Image.Image | np.ndarray]:
        return [self._square_image(image, **options) for image in images]

    @staticmethod
    def _chw_shape(square: Image.Image | np.ndarray | PaddedSquare) -> tuple[int, int, int]:
        if isinstance(square, (Image.Image, PaddedSquare)):
            return (3, square.height, square.width)
        return (3, *square.shape[:2])

    @staticmethod
    def _empty(shape: tuple[int, ...], like: Any) -> np.ndarray:
        return np.empty(shape, dtype=np.float32)

    @staticmethod
    def _lookup(table: np.ndarray, square: Image.Image | np.ndarray | PaddedSquare,
                out: np.ndarray | None = None) -> np.ndarray:
        # Rescale + normalise depend only on (channel, uint8 value): one 256-entry table per channel,
        # filled with exactly the original arithmetic, replaces ~6 passes over the image. It is applied
        # to each channel plane (which also skips the HWC -> CHW transpose) two pixels per gather, from
        # a table of value pairs; a padded square's padding is a fill.
        pixels = np.empty(EagleImageProcessor._chw_shape(square), dtype=np.float32) if out is None else out
        table = np.ascontiguousarray(np.broadcast_to(table, (3, 256)), dtype=np.float32)
        pairs = _pair_tables(table.tobytes())
        band, image = (slice(None),), square
        if isinstance(square, PaddedSquare):
            before, band, after = square.regions()
            for c in range(3):
                pixels[c][before] = pixels[c][after] = table[c, square.fill[c]]
            image = square.band
        planes = image.split() if isinstance(image, Image.Image) else [image[:, :, c] for c in range(3)]
        for c, plane in enumerate(planes):
            dest = pixels[c][band]  # a column band's rows are not contiguous: gathered into a buffer, then copied
            target = dest if dest.flags.c_contiguous else np.empty(dest.shape, dtype=np.float32)
            _lookup_plane(table[c], pairs[c], np.ascontiguousarray(plane, dtype=np.uint8), target)
            if target is not dest:
                dest[...] = target
        return pixels


class EagleImageProcessorTorchvision(EagleImageProcessingMixin, TorchvisionBackend):
    r"""EAGLE image processor on the torchvision backend (tensors, optionally on ``device=``, images of
    one shape resized as a batch). Same steps and keywords as `EagleImageProcessor`; torchvision's
    antialiased bicubic resize on uint8 differs from PIL's by at most one grey level at some pixels,
    and the rescale/normalise values are the same table, so ``pixel_values`` differ only there (by one
    level / std). `AutoImageProcessor` keeps the PIL backend by default, for exact parity with the
    original; ask for this one with ``backend="torchvision"``.
    """

    def _from_rgb(self, images: list[Image.Image], device: Any = None) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous() for image in images]
        return [t.to(device) for t in tensors] if device is not None else tensors

    @staticmethod
    def expand_to_square(image: torch.Tensor, background: tuple[int, ...]) -> torch.Tensor:
        """The original ``expand2square`` on a ``[3, H, W]`` uint8 tensor."""
        height, width = image.shape[-2:]
        if width == height:
            return image
        side = max(width, height)
        canvas = torch.tensor(background, dtype=image.dtype, device=image.device)[:, None, None].repeat(1, side, side)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[:, top:top + height, left:left + width] = image
        return canvas

    def _squares(self, images: list[torch.Tensor], pad_to_square: bool, do_resize: bool, size: SizeDict,
                 resample: Any, do_center_crop: bool, crop_size: SizeDict, image_mean: Any,
                 disable_grouping: bool | None = None) -> list[torch.Tensor]:
        """[3, H, W] uint8 squares; images of one shape are resized and cropped as one batch."""
        if pad_to_square:
            background = self._background(image_mean)
            images = [self.expand_to_square(image, background) for image in images]
        grouped, index = group_images_by_shape(images, disable_grouping=disable_grouping)
        done = {}
        for shape, stacked in grouped.items():
            if do_resize:
                height, width = self._resize_target(stacked.shape[-1], stacked.shape[-2], size)
                if (height, width) != tuple(stacked.shape[-2:]):
                    stacked = self.resize(stacked, SizeDict(height=height, width=width), resample=resample)
            if do_center_crop:
                stacked = self.center_crop(stacked, crop_size)
            done[shape] = stacked
        return reorder_images(done, index)

    def _square_uint8(self, image: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._squares([image], **kwargs)[0]

    @staticmethod
    def _chw_shape(square: torch.Tensor) -> tuple[int, int, int]:
        return tuple(square.shape)

    @staticmethod
    def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=like.device)

    @staticmethod
    def _lookup(table: np.ndarray, square: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        values = torch.from_numpy(table).to(square.device)
        pixels = values.gather(1, square.flatten(1).long()).view(square.shape)
        return pixels if out is None else out.copy_(pixels)
