"""The MedicalNet 3-D ResNet-50 feature network of WDM's FID, built with MONAI.

WDM computes FID on the 2048-d global-average-pooled ``layer4`` output of MedicalNet's ResNet-50
(``resnet_50_23dataset.pth``, Chen et al. 2019). MONAI's ``resnet50`` has the same parameter names and shapes,
but by default its ``layer3`` and ``layer4`` downsample with stride 2, whereas MedicalNet keeps them at the
resolution of ``layer2`` and dilates their 3x3x3 convolutions by 2 and 4. The weights load into either
network without complaint, so the unpatched network silently computes different features.
:func:`build_medicalnet_resnet50` builds the MedicalNet variant:

* stem: 7^3 convolution with stride 2, batch norm, ReLU, 3^3 max-pool with stride 2;
* bottleneck blocks [3, 4, 6, 3], shortcut type B (1^3 projection + BN, no bias anywhere in convolutions);
* ``layer2`` strides by 2; ``layer3`` and ``layer4`` have stride 1 and dilation (= padding) 2 and 4;
* head: adaptive average pooling to 1^3 and flatten; no classifier.

The network always runs in eval mode (batch norm uses its running statistics) and without gradients.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, InputShapeError
from .dependencies import import_optional

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
NETWORK_NAME = "MedicalNet ResNet-50 (shortcut B, layer3/4 dilated 2/4), global-average-pooled layer4, 2048-d"
#: Dilation of every 3^3 convolution in layer3 and layer4 of MedicalNet (the layers themselves do not stride).
MEDICALNET_DILATION = {"layer3": 2, "layer4": 4}
#: Where MedicalNet's weights are published, and the file the FID protocol uses.
MEDICALNET_URL = "https://github.com/Tencent/MedicalNet"
WEIGHTS_FILE = "resnet_50_23dataset.pth"
WHERE_TO_GET = (
    f"MedicalNet's weights are published at {MEDICALNET_URL}: the pretrained-model archive linked from its README "
    f"holds pretrain/{WEIGHTS_FILE} (the ResNet-50 trained on 23 datasets, about 185 MB)"
)
#: Parameter-free keys of MedicalNet's segmentation head that may appear in a full checkpoint and are dropped.
_HEAD_PREFIXES = ("conv_seg.", "fc.")


def _require_monai():
    return import_optional("monai.networks.nets", "The FID feature network (MedicalNet ResNet-50)").resnet50


def build_medicalnet_resnet50() -> nn.Module:
    """MONAI's 3-D ResNet-50 patched to MedicalNet's layout (random weights, eval mode).

    Load weights with :func:`load_medicalnet_state_dict` and ``model.load_state_dict(..., strict=True)``, or
    use :class:`MedicalNetFeatureExtractor`, which does both.
    """
    resnet50 = _require_monai()
    model = resnet50(
        spatial_dims=3,
        n_input_channels=1,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
        conv1_t_stride=2,
    )
    for layer_name, dilation in MEDICALNET_DILATION.items():
        layer = getattr(model, layer_name)
        for block in layer:
            conv = block.conv2
            conv.stride = (1, 1, 1)
            conv.dilation = (dilation,) * 3
            conv.padding = (dilation,) * 3
            block.stride = 1
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1, 1)
    return model.eval()


def load_medicalnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``resnet_50_23dataset.pth``: unwrap ``state_dict``, strip the ``module.`` prefix, drop head keys.

    The file is read with ``weights_only=True`` (no arbitrary objects are unpickled).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not the MedicalNet weights file: pass the file itself "
            f"(e.g. {path / 'pretrain' / WEIGHTS_FILE} in the unpacked archive). {WHERE_TO_GET}."
        )
    if not path.is_file():
        raise CheckpointError(f"MedicalNet weights not found at {path}. {WHERE_TO_GET}; pass the file's path.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Could not read MedicalNet weights from {path}: {_unreadable_reason(path, exc)}. {WHERE_TO_GET}."
        ) from exc
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            f"{path} does not hold a state dict of tensors (neither at the top level nor under "
            f"'state_dict'). Pass MedicalNet's {WEIGHTS_FILE}: {WHERE_TO_GET}."
        )
    state: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in checkpoint.items():
        bare = key[len("module.") :] if key.startswith("module.") else key
        if bare.startswith(_HEAD_PREFIXES):
            dropped.append(bare)
            continue
        state[bare] = value
    if dropped:
        logger.info("Ignoring %d head entries of %s (the feature network has no head)", len(dropped), path)
    return state


def _unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` could not read ``path``, in words (the exception's own text is often empty)."""
    from ..models.checkpoints import torch_load_reason

    if isinstance(exc, OSError) and exc.errno != errno.EINVAL:  # EINVAL: torch seeking past a truncated end
        return f"{exc.strerror or exc} ({type(exc).__name__})"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): the download or copy did not finish"
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04") and _is_the_medicalnet_archive(path):
        return f"it is MedicalNet's archive, not the weights: unpack it and pass pretrain/{WEIGHTS_FILE} from it"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        page = "; it looks like a web page saved instead of the file" if head.lstrip()[:1] == b"<" else ""
        return f"it is not a PyTorch checkpoint (neither a zip archive nor a pickle{page}; {size:,} bytes)"
    reason = torch_load_reason(exc)
    if "global" in reason.lower():
        return f"it holds Python objects besides tensors, which are never unpickled here ({reason})"
    truncated_zip = head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path)  # no central directory
    if truncated_zip or isinstance(exc, EOFError) or "central directory" in reason or "failed reading" in reason:
        return f"it is truncated or corrupt ({size:,} bytes; {reason}): download it again"
    return f"torch.load refused it ({reason}; {size:,} bytes)"


def _misfit(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """How a state dict differs from the network's: missing, unexpected and reshaped tensors, with an example."""
    expected = model.state_dict()
    groups = (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("of another shape", [k for k in state if k in expected and state[k].shape != expected[k].shape]),
    )
    return "; ".join(f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in groups if keys) or "no difference found"


def _is_the_medicalnet_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"pretrain/{WEIGHTS_FILE}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise the device as given (checked)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was requested but CUDA is not available in this PyTorch build; "
            "use --device cpu (slower) or install a CUDA build of PyTorch."
        )
    return resolved


@contextlib.contextmanager
def _exact_cuda_math(device: torch.device) -> Iterator[None]:
    """Turn TF32 off for the duration (PyTorch allows TF32 in cuDNN convolutions by default)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class MedicalNetFeatureExtractor:
    """Volumes in, 2048-d MedicalNet features out (one volume per forward pass, as in WDM's FID).

    Args:
        weights: path of ``resnet_50_23dataset.pth`` (or a state dict already read with
            :func:`load_medicalnet_state_dict`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``torch.float32`` (default, as released) or ``torch.float64`` (for tight comparisons).
        allow_tf32: keep PyTorch's default TF32 convolutions on CUDA (faster, ~1e-3 relative error). Off by
            default so that GPU features agree with CPU features.
    """

    def __init__(
        self,
        weights: str | Path | Mapping[str, torch.Tensor],
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype = torch.float32,
        allow_tf32: bool = False,
    ):
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.allow_tf32 = allow_tf32
        if isinstance(weights, (str, Path)):
            self.weights_path: Path | None = Path(weights)
            state = load_medicalnet_state_dict(weights)
            self.weights_id = file_sha256(weights)
        else:
            self.weights_path = None
            state = dict(weights)
            self.weights_id = _state_dict_digest(state)
        model = build_medicalnet_resnet50()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"The weights do not fit MedicalNet's ResNet-50 ({_misfit(model, state)}). Use {WEIGHTS_FILE} "
                f"(ResNet-50, 23 datasets); other depths or the 8-dataset files have other layers. {WHERE_TO_GET}."
            ) from exc
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @property
    def config(self) -> dict:
        """What determines the features (part of the statistics-cache key)."""
        return {
            "network": NETWORK_NAME,
            "weights_sha256": self.weights_id,
            "dtype": str(self.dtype).split(".")[-1],
        }

    def _as_input(self, volume: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
        while x.dim() > 3 and x.shape[0] == 1:
            x = x[0]
        while x.dim() > 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.dim() != 3:
            raise InputShapeError(
                f"A volume for the FID network must be 3-D (one channel), got shape {tuple(volume.shape)}. "
                "Pass one scalar volume per file."
            )
        if min(x.shape) < 2:
            raise InputShapeError(f"Volume of shape {tuple(x.shape)} is too small for the FID network.")
        if not torch.is_floating_point(x):
            x = x.float()
        return x[None, None].to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def features(self, volume: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features of one volume [D, H, W] (values in [0, 1] as in WDM's protocol): float64 array [2048]."""
        x = self._as_input(volume)
        ctx = contextlib.nullcontext() if self.allow_tf32 else _exact_cuda_math(self.device)
        with ctx:
            out = self.model(x)
        return out[0].double().cpu().numpy()

    @torch.no_grad()
    def features_batch(self, volumes: torch.Tensor) -> torch.Tensor:
        """Features of a batch [B, 1, D, H, W] in one forward pass (fp32 results differ from one-at-a-time by
        up to ~1e-5; the released protocol uses one volume per pass)."""
        if volumes.dim() != 5 or volumes.shape[1] != 1:
            raise InputShapeError(f"Expected a batch [B, 1, D, H, W], got shape {tuple(volumes.shape)}.")
        ctx = contextlib.nullcontext() if self.allow_tf32 else _exact_cuda_math(self.device)
        with ctx:
            return self.model(volumes.to(device=self.device, dtype=self.dtype))


def _state_dict_digest(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dim() else tensor.reshape(1).numpy().tobytes())
    return digest.hexdigest()
