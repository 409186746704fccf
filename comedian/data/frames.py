"""Frames of a video half at a fixed rate (2 fps), packed as JPEGs in ONE HDF5 file, and their reader.

Extraction (:func:`extract_frames`, ``comedian extract``) runs one ffmpeg process per half: decode,
``fps`` filter, MJPEG encoding by ffmpeg itself (``-f image2pipe -c:v mjpeg -q:v Q``), frames kept
at the video's native size (398x224 for SoccerNet). The JPEG byte stream that ffmpeg writes to its
stdout is stored verbatim; Python only finds the frame boundaries in it (by JPEG markers), so the
cost of a half is that of ffmpeg decoding the video.

Packed file layout (HDF5)::

    jpeg     uint8 (B,)          the JPEGs of all frames, back to back (chunked, uncompressed)
    offsets  int64 (count + 1,)  frame i is jpeg[offsets[i]:offsets[i + 1]]
    attrs    fps (float, frames per second), count (int, frames), duration_s (float, seconds:
             where the video ends, as ffmpeg's log states it: the video stream's Matroska
             DURATION tag, else the container's Duration, else count / fps), width, height (int,
             pixels), source (str, the video's file name), quality (int, ffmpeg q:v),
             corrupt_input_frames (int, input frames the decoder reported corrupt),
             format (str), complete (bool, written last)

so any run of consecutive frames is ONE read of a contiguous byte range of ``jpeg`` (whose chunks
are written, and lie in the file, in stream order). A file whose ``complete``
attribute is missing is never accepted by :class:`PackedFrames`; the file is also written through
:func:`comedian.io.atomic_path`, so an interrupted job leaves only a ``.partial`` file, which the
next run replaces.

Frame time convention
---------------------
Frame ``i`` is at time ``i / fps`` seconds, and it shows the last video frame whose timestamp is at
or before that time (the frame on screen at ``i / fps``: sample and hold). For a 25-fps video at
2 fps, frame ``i`` is input frame ``floor(i * 25 / 2)``: 0, 12, 25, 37, 50, ...

This is exactly what ffmpeg's filter ``fps=fps=F:round=up:start_time=0`` does: it gives every input frame the
output slot ``ceil(t * F)`` (``t`` its timestamp in seconds; exact integer arithmetic), and output
frame ``i`` is the LAST input frame whose slot is ``<= i``, i.e. whose ``t <= i / F``; a slot that
no input frame falls in repeats the previous frame. (ffmpeg's default ``round=near`` would instead
give frame ``i`` the last input frame with ``t < (i + 0.5) / F``, a quarter of a second late at
2 fps.) Time 0 is the start of the file: ffmpeg subtracts the container's start time from all
timestamps, and ``start_time=0`` makes output frame 0 the slot of time 0, so frame ``i`` stays at
``i / fps`` even when the video stream starts later than the file (e.g. after the audio); frames
before the first video frame then show the first video frame. (Without ``start_time`` the first
output would be the slot of the first video frame, shifting every index.) At the end the filter
rounds the end of the video (last timestamp + one frame duration) up the same way, so
``count = ceil(video_end_s * fps)``: the last frame is the last ``i`` with ``i / fps`` before the
end of the video. ``tests/test_frames.py`` checks this on a video whose frames show their index.

Reader
------
:class:`PackedFrames` opens the HDF5 file lazily, on the first read, in the process that reads
(it notes the process id and reopens after a fork), and drops the handle when pickled; so one
instance can be built in the main process and handed to DataLoader workers, forked or spawned.
JPEGs are decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo), resized if asked by
``torchvision.transforms.v2`` (bilinear, antialiased), one frame at a time into the output array:
``bench/bench_frames.py`` measured this ~1.6x faster than PIL on CPU for 398x224 frames, with the
same pixels (within 1 grey level). torchvision 0.29 deprecates its image decoding (TorchCodec
replaces it), so ``decoder="auto"`` falls back to PIL where it is gone; ``decoder="pil"`` avoids
importing torch. In a forked process
the first torchvision decode sets torch's intra-op threads to 1, as DataLoader workers do, since
torch's OpenMP thread pool deadlocks in a child forked after the parent used it. On a cluster file
system without file locks, set ``HDF5_USE_FILE_LOCKING=FALSE`` (files are never written in place).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from comedian.errors import InputError
from comedian.io import atomic_h5

FORMAT = "comedian-packed-jpeg-v1"
DEFAULT_FPS = 2.0
#: ffmpeg's MJPEG ``-q:v`` scale: 1 (best, largest) .. 31 (worst, smallest).
DEFAULT_QUALITY = 3
#: the ``jpeg`` dataset's HDF5 chunk, in bytes.
_CHUNK_BYTES = 1 << 18
_READ_BYTES = 1 << 20
_WRITE_BYTES = 1 << 23


def ffmpeg_binary(path: str | Path | None = None) -> str:
    """The ffmpeg executable: ``path`` if given, else the static binary of ``imageio_ffmpeg``."""
    if path is None:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        raise InputError(f"{path}: ffmpeg binary not found or not executable")
    return str(path)


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------


class JpegSplitter:
    """Finds the frame boundaries in a stream of back-to-back baseline JPEGs, fed in pieces.

    Each JPEG is ``SOI (FFD8)``, length-prefixed marker segments, ``SOS (FFDA)`` and its header,
    entropy-coded data in which every ``FF`` byte is followed by ``00`` or a restart marker, then
    ``EOI (FFD9)``. Walking the segments up to SOS and then finding the first ``FFD9`` is exact.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # stream position of _buf[0]
        self.ends: list[int] = []  # stream position just past each complete JPEG

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the stream; complete JPEGs append their end to :attr:`ends`."""
        self._buf += data
        buf, pos = self._buf, 0
        while True:
            end = self._jpeg_end(buf, pos)
            if end is None:
                break
            self.ends.append(self._base + end)
            pos = end
        if pos:
            del buf[:pos]
            self._base += pos

    def close(self) -> None:
        """Check that the stream ended at a frame boundary."""
        if self._buf:
            raise ValueError(f"{len(self._buf)} bytes after the last complete JPEG")

    @staticmethod
    def _jpeg_end(buf: bytearray, start: int) -> int | None:
        n = len(buf)
        if n - start < 4:
            return None
        if buf[start] != 0xFF or buf[start + 1] != 0xD8:
            raise ValueError(f"no JPEG start marker at stream byte {start}")
        q = start + 2
        while True:
            if q + 4 > n:
                return None
            if buf[q] != 0xFF:
                raise ValueError(f"bad JPEG marker at stream byte {q}")
            marker = buf[q + 1]
            if marker == 0xFF:  # fill byte
                q += 1
                continue
            length = (buf[q + 2] << 8) | buf[q + 3]
            q += 2 + length
            if marker == 0xDA:  # start of scan: entropy-coded data up to EOI
                eoi = buf.find(b"\xff\xd9", q)
                return None if eoi < 0 else eoi + 2


_DURATION_RE = re.compile(r"^\s*Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_TAG_RE = re.compile(r"^\s+DURATION\s*:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_FPS_RE = re.compile(r", (\d+(?:\.\d+)?)(k?) (?:fps|tbr)\b")


def _hms(match: re.Match) -> float:
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


@dataclasses.dataclass(frozen=True)
class FfmpegLog:
    """What ffmpeg's log (``-loglevel info``) tells about input #0 and its decoding.

    Attributes:
        duration_s: seconds; the video stream's own ``DURATION`` tag (Matroska) if present, else
            the container's ``Duration:`` (which covers the audio too); None if neither.
        input_fps: the video stream's frame rate (its ``fps``, else ``tbr``), or None.
        corrupt_frames: input frames that the decoder reported as corrupt ("corrupt decoded frame").
    """

    duration_s: float | None
    input_fps: float | None
    corrupt_frames: int


def parse_ffmpeg_log(stderr: str) -> FfmpegLog:
    """Read :class:`FfmpegLog` from the text that ffmpeg wrote to stderr."""
    in_input0, in_video = False, False
    container = tag = input_fps = None
    for line in stderr.splitlines():
        if line.startswith("Input #"):
            in_input0 = line.startswith("Input #0")
        elif line.startswith(("Output #", "Stream mapping")):
            in_input0 = False
        elif not in_input0:
            continue
        elif container is None and (m := _DURATION_RE.match(line)):
            container = _hms(m)
        elif re.match(r"^\s+Stream #0:\d+", line):
            in_video = ": Video:" in line and input_fps is None and tag is None
            if in_video and (m := _FPS_RE.search(line)):
                input_fps = float(m.group(1)) * (1000 if m.group(2) else 1)
        elif in_video and tag is None and (m := _TAG_RE.match(line)):
            tag = _hms(m)
    return FfmpegLog(
        duration_s=tag if tag is not None else container,
        input_fps=input_fps,
        corrupt_frames=stderr.count("corrupt decoded frame"),
    )


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "rror" in ln or "Invalid" in ln or "No such" in ln or "matches no streams" in ln:
            return ln
    return lines[-1] if lines else "no output"


class VideoJpegStream:
    """The extraction's ffmpeg process for one video: its frames at ``fps`` as a stream of JPEGs.

    One ffmpeg command for every user of the frame time convention (module docstring): decode, the
    filter ``fps=F:round=up:start_time=0``, MJPEG at ``-q:v quality`` to stdout. Iterate
    :meth:`chunks` (the bytes as ffmpeg writes them, :attr:`ends` marking where each complete JPEG
    ends) or :meth:`jpegs` (one JPEG at a time, holding only the current piece of the stream). When
    the iteration ends normally, ffmpeg has decoded the video to its end and the video passed the
    checks of a whole video (exit status, no bytes after the last JPEG, frames up to the duration
    that the file states, few corrupt input frames); :attr:`count`, :attr:`duration_s` and
    :attr:`corrupt_frames` are then set. Stopping early (closing the iterator) kills ffmpeg.

    Args:
        video, fps, quality, ffmpeg, threads, max_missing_s, max_corrupt_fraction: as
            :func:`extract_frames`.

    Raises:
        InputError: one line naming the video, for bad arguments (when built), and for a missing,
            truncated or corrupt video or one without frames (during or at the end of the iteration).
    """

    def __init__(self, video: str | Path, fps: float = DEFAULT_FPS, quality: int = DEFAULT_QUALITY,
                 ffmpeg: str | Path | None = None, threads: int = 0, max_missing_s: float = 1.0,
                 max_corrupt_fraction: float = 0.01) -> None:
        self.video = Path(video)
        if not self.video.is_file():
            raise InputError(f"{self.video}: video file not found")
        if not fps > 0:
            raise InputError(f"fps: must be > 0, got {fps}")
        if not 1 <= int(quality) <= 31:
            raise InputError(f"quality: ffmpeg q:v must be in 1..31, got {quality}")
        if int(threads) < 0:
            raise InputError(f"threads: must be >= 0, got {threads}")
        self.fps, self.quality, self.threads = float(fps), int(quality), int(threads)
        self.max_missing_s, self.max_corrupt_fraction = max_missing_s, max_corrupt_fraction
        self.exe = ffmpeg_binary(ffmpeg)
        self.ends: list[int] = []
        self.count: int | None = None
        self.duration_s: float | None = None
        self.corrupt_frames: int | None = None
        self._log: list[bytes] = []
        self._stated_s: float | None = None

    def stated_duration_s(self) -> float | None:
        """The duration (s) that the file states, once ffmpeg has logged its header (else None):
        known before the frames are decoded, e.g. for a progress estimate."""
        if self._stated_s is None and self._log:
            self._stated_s = parse_ffmpeg_log(b"".join(list(self._log)).decode("utf-8", "replace")).duration_s
        return self._stated_s

    def chunks(self) -> Iterator[bytes]:
        """The JPEG stream in pieces of at most ~1 MB; :attr:`ends` grows as JPEGs complete."""
        import ffmpeg as ffmpeg_python

        stream = ffmpeg_python.input(str(self.video), threads=self.threads).video
        stream = stream.filter("fps", fps=f"{self.fps:g}", round="up", start_time=0)
        out = ffmpeg_python.output(
            stream, "pipe:", format="image2pipe", vcodec="mjpeg", fps_mode="passthrough",
            threads=1, qmin=1, **{"q:v": self.quality},
        )
        cmd = [self.exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"]
        video = self.video
        proc = out.run_async(cmd=cmd, pipe_stdout=True, pipe_stderr=True)
        self._log.clear()
        err_thread = threading.Thread(target=lambda: self._log.extend(iter(proc.stderr.readline, b"")), daemon=True)
        err_thread.start()
        splitter = JpegSplitter()
        self.ends = splitter.ends
        try:
            while chunk := proc.stdout.read1(_READ_BYTES):
                splitter.feed(chunk)
                yield chunk
            rc = proc.wait()
            splitter.close()
        except ValueError as err:  # from the splitter: not a stream of JPEGs
            raise InputError(f"{video}: ffmpeg wrote a broken JPEG stream: {err}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err_thread.join()
        stderr = b"".join(self._log).decode("utf-8", "replace")
        if rc != 0:
            if "matches no streams" in stderr:
                raise InputError(f"{video}: no video stream")
            raise InputError(f"{video}: ffmpeg failed (exit {rc}): {_last_error_line(stderr)}")
        count = len(splitter.ends)
        if count == 0:
            raise InputError(f"{video}: no video frames decoded")
        log = parse_ffmpeg_log(stderr)
        duration = log.duration_s if log.duration_s is not None else count / self.fps
        expected = math.ceil(duration * self.fps - 1e-6)
        if count + round(self.max_missing_s * self.fps) < expected:
            raise InputError(
                f"{video}: truncated or corrupt video: decoded {count} frames ({count / self.fps:.1f} s) "
                f"but the file states {duration:.1f} s"
            )
        n_input = duration * log.input_fps if log.input_fps else None
        if n_input and log.corrupt_frames > self.max_corrupt_fraction * n_input:
            raise InputError(
                f"{video}: corrupt video: the decoder reported {log.corrupt_frames} of ~{n_input:.0f} "
                f"frames corrupt (more than {self.max_corrupt_fraction:.1%})"
            )
        self.count, self.duration_s, self.corrupt_frames = count, float(duration), int(log.corrupt_frames)

    def jpegs(self) -> Iterator[bytes]:
        """The frames' JPEGs one by one, in frame order (frame i is at ``i / fps`` s)."""
        buf, base, done = bytearray(), 0, 0  # base: stream position of buf[0]
        for chunk in self.chunks():
            buf += chunk
            while done < len(self.ends):
                end = self.ends[done] - base
                yield bytes(buf[:end])
                del buf[:end]
                base += end
                done += 1


def extract_frames(
    video: str | Path,
    output: str | Path,
    fps: float = DEFAULT_FPS,
    quality: int = DEFAULT_QUALITY,
    ffmpeg: str | Path | None = None,
    threads: int = 0,
    max_missing_s: float = 1.0,
    max_corrupt_fraction: float = 0.01,
) -> dict:
    """Extract the frames of one video at ``fps`` into the packed HDF5 file ``output``.

    Args:
        video: the video file (e.g. a SoccerNet ``1_224p.mkv``).
        output: the ``.h5`` file to write (atomically; see the module docstring for its layout).
        fps: output frames per second; frame i is at i / fps seconds (module docstring).
        quality: ffmpeg MJPEG ``-q:v``, 1 (best) .. 31.
        ffmpeg: ffmpeg executable; default: the one of ``imageio_ffmpeg``.
        threads: ffmpeg decoder threads (0 = ffmpeg's choice).
        max_missing_s: how many seconds of video may be missing at the end compared to the
            duration that the file states before it counts as truncated.
        max_corrupt_fraction: the largest fraction of input frames that the decoder may report
            corrupt (it conceals the damage) before the video counts as corrupt.

    Returns:
        The file's attributes (fps, count, duration_s, width, height, source, quality, ...) plus
        ``bytes`` (size of the JPEG data) and ``seconds`` (wall time taken).

    Raises:
        InputError: missing, truncated or corrupt video, or a video without frames (one line,
            naming the file); no output is left.
    """
    t0 = time.perf_counter()
    stream = VideoJpegStream(video, fps, quality, ffmpeg, threads, max_missing_s, max_corrupt_fraction)
    with atomic_h5(output) as h5:
        data = h5.create_dataset("jpeg", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                 chunks=(_CHUNK_BYTES,))
        pending, size = bytearray(), 0

        def flush() -> None:  # few large HDF5 writes: Python's share of the CPU time stays ~1 %
            nonlocal size
            data.resize((size + len(pending),))
            data[size:] = np.frombuffer(pending, dtype=np.uint8)
            size += len(pending)
            pending.clear()

        for chunk in stream.chunks():
            pending += chunk
            if len(pending) >= _WRITE_BYTES:
                flush()
        flush()
        offsets = np.zeros(stream.count + 1, dtype=np.int64)
        offsets[1:] = stream.ends
        h5.create_dataset("offsets", data=offsets)
        width, height = _jpeg_size(bytes(data[: offsets[1]]))
        attrs = {
            "format": FORMAT,
            "fps": float(fps),
            "count": int(stream.count),
            "duration_s": float(stream.duration_s),
            "width": int(width),
            "height": int(height),
            "source": stream.video.name,
            "quality": int(quality),
            "corrupt_input_frames": int(stream.corrupt_frames),
        }
        h5.attrs.update(attrs)
        h5.attrs["complete"] = True
    return {**attrs, "bytes": int(size), "seconds": time.perf_counter() - t0}


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        return img.size  # (width, height)


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


class PackedFrames:
    """Read runs of consecutive frames of one packed file (see the module docstring).

    Metadata (and the small ``offsets`` array) are read when the object is built, with the file
    closed again afterwards; the HDF5 handle for frame data is opened on the first read, in the
    reading process (reopened after a fork, dropped when pickled): safe to build once and use in
    DataLoader workers.

    Args:
        path: the packed file.
        decoder: JPEG decoder, ``"auto"``, ``"torchvision"`` or ``"pil"``; see :func:`decode_jpegs`.

    Attributes:
        path: the packed file.
        fps: frames per second; frame i is at ``i / fps`` seconds.
        count: number of frames.
        duration_s: where the source video ends, seconds (``count == ceil(duration_s * fps)``
            up to the truncation tolerance of :func:`extract_frames`).
        size: native frame size ``(height, width)`` in pixels.
        source: file name of the source video.
        quality: ffmpeg MJPEG q:v the frames were encoded with.
        offsets: int64 (count + 1,), byte offsets of the frames in the ``jpeg`` dataset.
    """

    def __init__(self, path: str | Path, decoder: str = "auto") -> None:
        import h5py

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder = decoder
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: packed frame file not found")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = dict(h5.attrs)
                if not attrs.get("complete", False):
                    raise InputError(f"{self.path}: incomplete packed frame file (no 'complete' mark)")
                if attrs.get("format") != FORMAT:
                    raise InputError(f"{self.path}: format {attrs.get('format')!r}, expected {FORMAT!r}")
                self.offsets = h5["offsets"][:]
        except OSError as err:
            raise InputError(f"{self.path}: not a readable HDF5 file ({err})") from None
        self.fps = float(attrs["fps"])
        self.count = int(attrs["count"])
        self.duration_s = float(attrs["duration_s"])
        self.size = (int(attrs["height"]), int(attrs["width"]))
        self.source = str(attrs["source"])
        self.quality = int(attrs["quality"])
        self._h5 = None
        self._jpeg = None  # the open file's ``jpeg`` dataset (a group lookup costs more than a short read)
        self._pid: int | None = None

    # -- time <-> index ---------------------------------------------------------------------
    def time_of(self, index: int | np.ndarray) -> float | np.ndarray:
        """Time (seconds) of frame ``index``: ``index / fps``."""
        return index / self.fps

    def index_of(self, time_s: float) -> int:
        """Index of the frame nearest to ``time_s`` seconds (``round(time_s * fps)``, ties up)."""
        return int(math.floor(time_s * self.fps + 0.5))

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def _data(self):
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self._jpeg = self._h5["jpeg"]
            self._pid = os.getpid()
        return self._jpeg

    def _check_range(self, start: int, count: int) -> None:
        if count < 1 or start < 0 or start + count > self.count:
            raise IndexError(
                f"{self.path}: frames [{start}, {start + count}) out of range: file has {self.count} "
                f"frames ({self.count / self.fps:.1f} s at {self.fps:g} fps)"
            )

    def read_jpegs(self, start: int, count: int) -> list[np.ndarray]:
        """The JPEGs of frames ``start .. start + count - 1``: uint8 views of ONE contiguous read."""
        start, count = int(start), int(count)
        self._check_range(start, count)
        lo, hi = int(self.offsets[start]), int(self.offsets[start + count])
        blob = self._data()[lo:hi]
        cuts = self.offsets[start : start + count + 1] - lo
        return [blob[cuts[k] : cuts[k + 1]] for k in range(count)]

    def read(self, start: int, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Decode frames ``start .. start + count - 1`` (with :func:`decode_jpegs`).

        Args:
            start: first frame index (frame i is at ``i / fps`` s).
            count: number of consecutive frames.
            size: ``(height, width)`` to resize to (bilinear, antialiased); None = native.

        Returns:
            uint8 array (count, H, W, 3), RGB.
        """
        return decode_jpegs(self.read_jpegs(start, count), size=size, decoder=self.decoder)

    def read_into(self, start: int, count: int, out, size: tuple[int, int] | None = None) -> None:
        """Decode frames ``start .. start + count - 1`` into ``out``, a uint8 tensor (count, H, W, 3) at ``size``
        (None = native): :func:`decode_into`."""
        decode_into(self.read_jpegs(start, count), out, size=size, decoder=self.decoder)

    def read_time(self, start_s: float, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """``read(index_of(start_s), count, size)``: ``count`` frames from ``start_s`` seconds."""
        return self.read(self.index_of(start_s), count, size=size)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._jpeg, self._pid = None, None, None

    def __enter__(self) -> PackedFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"], state["_jpeg"], state["_pid"] = None, None, None
        return state

    def __repr__(self) -> str:
        h, w = self.size
        return (f"PackedFrames({str(self.path)!r}, count={self.count}, fps={self.fps:g}, "
                f"size={h}x{w}, duration_s={self.duration_s:.2f})")


DECODERS: tuple[str, ...] = ("auto", "torchvision", "pil")


def decode_jpegs(
    jpegs: Sequence[bytes | memoryview | np.ndarray],
    size: tuple[int, int] | None = None,
    decoder: str = "auto",
) -> np.ndarray:
    """Decode JPEGs of one size into uint8 (N, H, W, 3) RGB, optionally resized.

    Args:
        jpegs: N JPEG byte strings (bytes, memoryviews or 1-D uint8 arrays).
        size: ``(height, width)`` to resize to (bilinear, antialiased); None = native size.
        decoder: ``"torchvision"`` (``torchvision.io.decode_jpeg`` + ``transforms.v2`` resize:
            ~1.6x PIL's speed on CPU, ``bench/bench_frames.py``), ``"pil"`` (no torch import), or
            ``"auto"``: torchvision where its image decoding exists (deprecated since torchvision
            0.29 in favour of TorchCodec, so it may vanish), else PIL. Both use libjpeg-turbo;
            their pixels agree within 1 grey level.
    """
    decoder = _resolve_decoder(decoder)
    if len(jpegs) == 0:
        h, w = size if size is not None else (0, 0)
        return np.empty((0, h, w, 3), dtype=np.uint8)
    if decoder == "pil":
        return _decode_pil(jpegs, size)
    import torch

    with _quiet_torchvision():
        first = _decode_torchvision(jpegs[0], size)
    out = np.empty((len(jpegs), *first.shape), dtype=np.uint8)
    frames = torch.from_numpy(out)
    frames[0].copy_(first)
    decode_into(jpegs[1:], frames[1:], size, decoder)
    return out


def decode_into(
    jpegs: Sequence[bytes | memoryview | np.ndarray],
    out,
    size: tuple[int, int] | None = None,
    decoder: str = "auto",
) -> None:
    """Decode JPEGs into ``out``, a uint8 tensor (N, H, W, 3) (e.g. a slice of a loader's batch), RGB.

    With torchvision, one frame at a time: the decoder's output (which holds the pixels as (H, W, 3)) is
    copied into its slot straight away, so that the next frame's output reuses memory still in cache, and
    the copy is a plain one (no change of layout).

    Args:
        jpegs: N JPEG byte strings, as :func:`decode_jpegs`.
        out: the destination; (H, W) = ``size``, or the frames' native size when ``size`` is None.
        size, decoder: as :func:`decode_jpegs`.

    Raises:
        InputError: a JPEG does not decode to ``out``'s frame size.
    """
    import torch

    decoder = _resolve_decoder(decoder)
    if out.dtype != torch.uint8 or out.ndim != 4 or out.shape[0] != len(jpegs) or out.shape[3] != 3:
        raise ValueError(f"out must be uint8 ({len(jpegs)}, H, W, 3), got {out.dtype} {tuple(out.shape)}")
    if decoder == "pil" and len(jpegs):
        decoded = _decode_pil(jpegs, size)
        _check_size(decoded.shape[1:], out, 0, len(jpegs))
        out.copy_(torch.from_numpy(decoded))
        return
    with _quiet_torchvision():
        for k, jpeg in enumerate(jpegs):
            frame = _decode_torchvision(jpeg, size)
            _check_size(frame.shape, out, k, len(jpegs))
            out[k].copy_(frame)


def _check_size(shape: Sequence[int], out, k: int, n: int) -> None:
    if tuple(shape) != tuple(out.shape[1:]):
        raise InputError(f"JPEG {k} of {n} decodes to {tuple(shape[:2])} pixels, expected {tuple(out.shape[1:3])}")


def _resolve_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "torchvision" if _torchvision_decodes_jpeg() else "pil"
    return decoder


@contextlib.contextmanager
def _quiet_torchvision() -> Iterator[None]:
    """Silences torchvision 0.29's deprecation notice of its image decoding (see :func:`decode_jpegs`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _decode_torchvision(jpeg: bytes | memoryview | np.ndarray, size: tuple[int, int] | None):
    """One JPEG decoded by ``torchvision.io.decode_jpeg`` (resized to ``size`` if given): uint8 (H, W, 3)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    if _FORKED and torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # torch's OpenMP pool does not survive fork (DataLoader does this too)
    # (3, H, W), held as (H, W, 3) in memory
    image = decode_jpeg(torch.from_numpy(_writable_uint8(jpeg)), mode=ImageReadMode.RGB)
    if size is not None and tuple(image.shape[1:]) != tuple(size):
        image = resize(image, list(size), antialias=True)
    return image.permute(1, 2, 0)


_FORKED = False


def _mark_forked() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_mark_forked)


@functools.cache
def _torchvision_decodes_jpeg() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
        from torchvision.io.image import _has_image_ops
    except ImportError:
        return False
    return bool(_has_image_ops())


def _writable_uint8(jpeg: bytes | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(jpeg, np.ndarray) and jpeg.flags.writeable:
        return jpeg
    return np.frombuffer(jpeg, dtype=np.uint8).copy()


def _decode_pil(jpegs: Sequence[bytes | memoryview | np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    out = None
    for k, jpeg in enumerate(jpegs):
        with Image.open(io.BytesIO(memoryview(jpeg))) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
        if out is None:
            out = np.empty((len(jpegs), *arr.shape), dtype=np.uint8)
        out[k] = arr
    return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian extract",
        description="Extract a video's frames at a fixed rate into one packed HDF5 file of JPEGs.",
    )
    parser.add_argument("--video", required=True, type=Path, help="input video (e.g. <game>/1_224p.mkv)")
    parser.add_argument("--output", required=True, type=Path, help="packed frame file to write (.h5)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames per second (default 2)")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                        help=f"ffmpeg MJPEG q:v, 1 (best) .. 31 (default {DEFAULT_QUALITY})")
    parser.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg's)")
    parser.add_argument("--threads", type=int, default=0, help="ffmpeg decoder threads (0 = auto)")
    parser.add_argument("--max-missing-s", type=float, default=1.0,
                        help="seconds of video that may be missing at the end compared to the duration "
                             "the file states before it counts as truncated (default 1)")
    parser.add_argument("--max-corrupt-fraction", type=float, default=0.01,
                        help="largest fraction of input frames the decoder may report corrupt "
                             "(default 0.01)")
    args = parser.parse_args(argv)
    from comedian.tracking import stage_run

    params = {"video": str(args.video), "fps": args.fps, "quality": args.quality}
    wildcards = {"game": args.output.parent.name, "half": args.output.stem}
    with stage_run("extract", wildcards=wildcards, params=params) as run:
        info = extract_frames(args.video, args.output, fps=args.fps, quality=args.quality,
                              ffmpeg=args.ffmpeg, threads=args.threads, max_missing_s=args.max_missing_s,
                              max_corrupt_fraction=args.max_corrupt_fraction)
        run.log_metrics({k: info[k] for k in ("count", "duration_s", "bytes", "seconds", "corrupt_input_frames")})
    print(
        f"{args.output}: {info['count']} frames at {info['fps']:g} fps, "
        f"{info['width']}x{info['height']}, video {info['duration_s']:.2f} s, "
        f"{info['bytes']} bytes, {info['seconds']:.2f} s taken"
        + (f", {info['corrupt_input_frames']} corrupt input frames" if info["corrupt_input_frames"] else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
