"""Attachments (``-f/--file``): files every persona is sent with the question.

* An image (PNG, JPEG, GIF or WebP, known by its first bytes) goes as an ``image_url`` part
  holding a ``data:`` URL, after the question's text.
* A PDF (``%PDF``) goes as its text, read with pypdf (``pip install 'fanout[pdf]'``), fenced
  with its name after the question.
* Any other file must be UTF-8 text, and goes the same way, fenced with its name.

Only the personas' calls carry them (a synthesizer or a judge reads the answers). Each file is
known by the SHA-256 of its bytes: the result document lists name, kind, media type, size and
hash, never the content, and a recorded run keeps each content once, by hash, in the store
beside the history (``attachments/``), which ``runs retry`` sends again from.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from fanout.config import open_regular_file
from fanout.errors import ConfigError
from fanout.models import Attachment, Call, Message

MAX_FILES = 32
MAX_IMAGE_BYTES = 20 * 2**20  # OpenAI's bound on one image
MAX_TEXT_BYTES = 16 * 2**20  # more than any model's context, as a prompt's
MAX_PDF_BYTES = 100 * 2**20
_IMAGES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
STORE_NAME = "attachments"


def load_attachments(paths: Sequence[Path]) -> tuple[Attachment, ...]:
    """The files ``-f`` names, read and checked: one ``ConfigError`` line naming the flag and
    the file for the first that cannot be sent (missing, not a file, too big, not text)."""
    if len(paths) > MAX_FILES:
        raise ConfigError(f"--file: at most {MAX_FILES} files")
    return tuple(_attachment(Path(path)) for path in paths)


def _attachment(path: Path) -> Attachment:
    try:
        with open_regular_file(path, "a file to attach") as source:
            raw = source.read(MAX_PDF_BYTES + 1)
    except ConfigError as exc:
        raise ConfigError(f"--file {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--file {path}: cannot read: {exc.strerror}") from None
    return attachment_of(path.name, raw, f"--file {path}")


def attachment_of(name: str, raw: bytes, where: str) -> Attachment:
    """A file's content as an attachment, by what it is (``where`` names it in errors)."""
    digest, size = hashlib.sha256(raw).hexdigest(), len(raw)
    media_type = _image_type(raw)
    if media_type is not None:
        if size > MAX_IMAGE_BYTES:
            raise ConfigError(f"{where}: an image over {MAX_IMAGE_BYTES // 2**20} MB")
        return Attachment(name, "image", media_type, digest, size, data=raw)
    if raw.startswith(b"%PDF"):
        if size > MAX_PDF_BYTES:
            raise ConfigError(f"{where}: a PDF over {MAX_PDF_BYTES // 2**20} MB")
        return Attachment(name, "pdf", "application/pdf", digest, size, text=pdf_text(where, raw))
    if size > MAX_TEXT_BYTES:
        raise ConfigError(f"{where}: over {MAX_TEXT_BYTES // 2**20} MB of text")
    if b"\x00" in raw:
        raise ConfigError(f"{where}: not an image, a PDF or text (binary data)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not an image, a PDF or UTF-8 text") from None
    return Attachment(name, "text", "text/plain", digest, size, text=text)


def attachments_of_json(items: object) -> tuple[Attachment, ...]:
    """``files`` of a JSON request (``POST /api/runs``): ``[{"name": ..., "content_base64":
    ...}]``, each read as a file of that name would be."""
    if not isinstance(items, list) or len(items) > MAX_FILES:
        raise ConfigError(f'files: a list of at most {MAX_FILES} {{"name", "content_base64"}}')
    attachments: list[Attachment] = []
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        encoded = item.get("content_base64") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip() or not isinstance(encoded, str):
            raise ConfigError(f'files[{index}]: give {{"name": ..., "content_base64": ...}}')
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ConfigError(f"files[{index}] ({name}): content_base64 is not base64") from None
        attachments.append(attachment_of(name.strip(), raw, f"files[{index}] ({name})"))
    return tuple(attachments)


def _image_type(raw: bytes) -> str | None:
    for magic, media_type in _IMAGES:
        if raw.startswith(magic):
            return media_type
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def pdf_text(where: str, raw: bytes) -> str:
    """A PDF's text, page by page, with pypdf; a one-line error if it is missing, the file is
    not a PDF it can read, or the PDF holds no text (a scan is images)."""
    try:
        import pypdf
    except ImportError:
        raise ConfigError(
            f"{where}: reading a PDF needs pypdf: pip install 'fanout[pdf]'"
        ) from None
    try:
        reader = pypdf.PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise ConfigError(f"{where}: the PDF is encrypted; fanout cannot read it")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ConfigError:
        raise
    except Exception as exc:  # pypdf raises many kinds on a broken file; any is one line
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ConfigError(f"{where}: not a PDF fanout can read ({detail})") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise ConfigError(f"{where}: the PDF holds no text (a scan? fanout sends a PDF's text)")
    return text


# -- into the messages ---------------------------------------------------------------------


def with_attachments(calls: Sequence[Call], attachments: Sequence[Attachment]) -> list[Call]:
    """The calls, the personas' ones carrying the attachments in their last user message."""
    if not attachments:
        return list(calls)
    return [
        replace(call, messages=attached(call.messages, attachments))
        if call.role == "persona" and call.skip is None
        else call
        for call in calls
    ]


def attached(messages: Sequence[Message], attachments: Sequence[Attachment]) -> tuple[Message, ...]:
    """``messages`` with the attachments in their last user message: the files' text fenced
    after the question, images as ``image_url`` parts after it."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None or not isinstance(messages[last].get("content"), str):
        return tuple(messages)
    texts = [fenced(a.name, a.text) for a in attachments if a.text is not None]
    text = "\n\n".join([messages[last]["content"], *texts])
    images = [a for a in attachments if a.kind == "image" and a.data is not None]
    content: str | list[dict[str, object]] = text
    if images:
        content = [{"type": "text", "text": text}]
        content += [{"type": "image_url", "image_url": {"url": data_url(a)}} for a in images]
    return (*messages[:last], {**messages[last], "content": content}, *messages[last + 1 :])


def fenced(name: str, text: str) -> str:
    """A file's text after its name, in a fence longer than any run of backticks in it."""
    fence = "`" * max(3, _longest_backticks(text) + 1)
    return f"{name}:\n{fence}\n{text.rstrip()}\n{fence}"


def _longest_backticks(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def data_url(attachment: Attachment) -> str:
    encoded = base64.b64encode(attachment.data or b"").decode("ascii")
    return f"data:{attachment.media_type};base64,{encoded}"


# -- recorded by hash ----------------------------------------------------------------------


def reference(attachment: Attachment) -> dict[str, object]:
    """An attachment as the document and the history list it: never its content."""
    return {
        "name": attachment.name,
        "kind": attachment.kind,
        "media_type": attachment.media_type,
        "bytes": attachment.size,
        "sha256": attachment.sha256,
    }


def store_dir(environ: Mapping[str, str]) -> Path:
    """``$FANOUT_HOME/attachments``, else ``attachments`` in the user data dir."""
    home = environ.get("FANOUT_HOME")
    if home:
        return Path(home).expanduser() / STORE_NAME
    import platformdirs

    return platformdirs.user_data_path("fanout") / STORE_NAME


def keep(attachments: Sequence[Attachment], environ: Mapping[str, str] | None = None) -> None:
    """Keep each content once, by hash, for ``runs retry`` (an image's bytes, a text's or a
    PDF's text). A store that cannot be written is left alone: the retry then says so."""
    directory = store_dir(os.environ if environ is None else environ)
    for attachment in attachments:
        target = directory / attachment.sha256
        if target.exists():
            continue
        payload = attachment.data if attachment.kind == "image" else attachment.text
        content = payload.encode("utf-8") if isinstance(payload, str) else payload or b""
        partial = directory / f".{attachment.sha256}.{os.getpid()}.partial"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(partial, target)
        except OSError:
            partial.unlink(missing_ok=True)


def from_references(
    references: Sequence[Mapping[str, object]], environ: Mapping[str, str] | None = None
) -> tuple[Attachment, ...]:
    """A recorded run's attachments, read back from the store (``ConfigError`` for one that
    is no longer there)."""
    directory = store_dir(os.environ if environ is None else environ)
    loaded: list[Attachment] = []
    for ref in references:
        name, kind, digest = str(ref.get("name")), str(ref.get("kind")), str(ref.get("sha256"))
        size = ref.get("bytes")
        try:
            content = (directory / digest).read_bytes()
        except (OSError, ValueError):
            raise ConfigError(
                f"the attachment {name} (sha256 {digest[:12]}) is no longer in {directory}"
            ) from None
        attachment = Attachment(
            name,
            "image" if kind == "image" else "pdf" if kind == "pdf" else "text",
            str(ref.get("media_type") or "text/plain"),
            digest,
            size if isinstance(size, int) else len(content),
        )
        if kind == "image":
            loaded.append(replace(attachment, data=content))
        else:
            loaded.append(replace(attachment, text=content.decode("utf-8", "replace")))
    return tuple(loaded)
