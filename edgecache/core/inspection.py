"""Is this disk image safe to hand a hypervisor? oslo.utils' format inspector decides.

Nova and Glance inspect images with ``oslo_utils.imageutils.format_inspector``
(the fix for CVE-2022-47951 and CVE-2024-32498: a qcow2 whose backing or data
file names a host path, a VMDK whose descriptor points at host files). A fill
feeds every byte it receives to an :class:`Inspection`, in its hash thread,
until the inspector names the format (most formats within the first MiB); the
verdict then follows Nova's rules for the record's ``disk_format``:

* a ``disk_format`` the inspector does not know is refused (the AMI family aside);
* the content must be that format, except that GPT and ISO content may be
  labelled ``raw`` (as Nova allows);
* the detected format's safety checks must pass (no backing file, no data
  file, a VMDK of an allowed create type...).

No parser of our own: every byte-level judgement is the library's.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from oslo_utils.imageutils import format_inspector

from edgecache.metrics import IMAGE_SAFETY_REASONS

LOG = logging.getLogger(__name__)

#: Nova checks neither their format nor lets them through a mismatch check.
AMI_FORMATS = frozenset({"ami", "aki", "ari"})
#: Content Nova accepts under a ``raw`` label.
RAW_TOLERATES = frozenset({"gpt", "iso"})
#: Nova's ``[compute] vmdk_allowed_types`` default.
DEFAULT_VMDK_TYPES = ("streamOptimized", "monolithicSparse")
#: A safety check's name in the inspector, as the reason it is counted under.
_CHECK_REASONS = {"backing_file": "backing_file", "data_file": "data_file"}
#: Every reason a refusal is counted under (``edgecache_image_safety_rejections_total``).
REASONS = IMAGE_SAFETY_REASONS


class Mode(enum.Enum):
    ENFORCE = "enforce"  # refuse and keep out of the cache
    LOG = "log"  # serve, but count and log what enforce would refuse
    OFF = "off"  # inspect nothing


@dataclass(frozen=True)
class SafetyPolicy:
    """``[image_safety]``: what to do with an unsafe image, and which VMDKs are fine."""

    mode: Mode = Mode.ENFORCE
    vmdk_allowed_types: tuple[str, ...] = DEFAULT_VMDK_TYPES
    #: verify ``img_signature`` (core/signature.py) of the images that carry one
    verify_signatures: bool = False
    #: refuse an image without a signature (with ``verify_signatures``)
    require_signatures: bool = False

    @property
    def inspects(self) -> bool:
        return self.mode is not Mode.OFF


@dataclass(frozen=True)
class Verdict:
    """What the inspection concluded: the format it found, and why it is unsafe if it is."""

    detected: str | None
    #: one of :data:`REASONS`, None when the image is safe
    reason: str | None = None
    detail: str = ""

    @property
    def safe(self) -> bool:
        return self.reason is None


class _Chunk:
    """The one-chunk source :class:`InspectWrapper` reads from: it is fed, not pulled."""

    def __init__(self) -> None:
        self.data = b""

    def read(self, size: int) -> bytes:
        return self.data


class Inspection:
    """One image's bytes, in order, through the format inspector, to one :class:`Verdict`.

    Not thread-safe: :meth:`feed` and :meth:`conclude` run in the fill's hash
    thread, one call at a time.
    """

    def __init__(
        self, image_id: str, disk_format: str | None, policy: SafetyPolicy, *,
        label_known: bool = True,
    ) -> None:
        """``label_known=False``: the record's ``disk_format`` is not known (a copy cached
        before edgecache inspected images): only the safety checks judge."""
        self.image_id = image_id
        self.disk_format = (disk_format or "").lower()
        self._label_known = label_known
        self.policy = policy
        #: bytes fed so far (the inspector stops being fed once it has decided)
        self.inspected = 0
        self.verdict: Verdict | None = None
        self._source = _Chunk()
        self._wrapper = format_inspector.InspectWrapper(self._source)  # type: ignore[arg-type]
        if label_known and self.disk_format not in AMI_FORMATS and (
            format_inspector.get_inspector(self.disk_format) is None
        ):
            self.verdict = Verdict(None, "unsupported_disk_format",
                                   f"disk_format {disk_format!r} cannot be inspected")

    def feed(self, chunk: bytes | memoryview) -> Verdict | None:
        """Inspect the next bytes of the image; the verdict once the format is known."""
        if self.verdict is not None:
            return self.verdict
        self._source.data = bytes(chunk)
        self.inspected += len(chunk)
        try:
            self._wrapper.read(len(chunk))
            found = self._wrapper.format
        except format_inspector.ImageFormatError as exc:
            self.verdict = Verdict(None, "multiple_formats", str(exc))
            return self.verdict
        except Exception as exc:  # the inspector's own failure: nothing vouches for the image
            LOG.exception("format inspector failed on image %s", self.image_id)
            self.verdict = Verdict(None, "safety_check", f"the inspector failed: {exc!r}")
            return self.verdict
        finally:
            self._source.data = b""
        if found is not None:
            self.verdict = self._judge(found)
        return self.verdict

    def conclude(self) -> Verdict:
        """Every byte has been fed: the verdict (formats that need the end decide now)."""
        if self.verdict is None:
            try:
                self._wrapper.close()
                found = self._wrapper.format
            except format_inspector.ImageFormatError as exc:
                self.verdict = Verdict(None, "multiple_formats", str(exc))
            except Exception as exc:
                LOG.exception("format inspector failed on image %s", self.image_id)
                self.verdict = Verdict(None, "safety_check", f"the inspector failed: {exc!r}")
            else:
                self.verdict = (
                    self._judge(found) if found is not None
                    else Verdict(None, "safety_check", "the inspector reached no verdict")
                )
        return self.verdict

    def _judge(self, found: format_inspector.FileInspector) -> Verdict:
        detected = str(found)
        claimed = self.disk_format
        if claimed == "raw" and detected in RAW_TOLERATES:
            claimed = detected
        if self._label_known and claimed not in AMI_FORMATS and detected != claimed:
            return Verdict(detected, "disk_format_mismatch",
                           f"its content is {detected}, its disk_format {self.disk_format}")
        try:
            found.safety_check()
        except format_inspector.SafetyCheckFailed as exc:
            name = sorted(exc.failures)[0]
            reason = _CHECK_REASONS.get(name, "safety_check")
            if detected == "vmdk" and name == "descriptor":
                reason = "vmdk_type"
            return Verdict(detected, reason, f"{name}: {exc.failures[name]}")
        except format_inspector.ImageFormatError as exc:
            return Verdict(detected, "safety_check", str(exc))
        if detected == "vmdk":
            kind = str(getattr(found, "vmdktype", "") or "")
            allowed = {t.lower() for t in self.policy.vmdk_allowed_types}
            if kind.lower() not in allowed:
                return Verdict(detected, "vmdk_type", f"VMDK create type {kind!r} is not allowed")
        return Verdict(detected)
