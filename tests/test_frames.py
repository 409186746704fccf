"""Frame extraction and the packed-frame reader, on tiny synthetic videos made here with ffmpeg."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from comedian.data import frames
from comedian.data.frames import JpegSplitter, PackedFrames, extract_frames
from comedian.errors import InputError

W, H, RATE = 398, 224, 25
N_BITS = 8
N_INPUT = 100  # 4 s at 25 fps


def _ffmpeg() -> str:
    return frames.ffmpeg_binary()


def _barcode(index: int) -> np.ndarray:
    """A (H, W, 3) uint8 frame showing ``index`` as N_BITS black/white blocks (LSB left)."""
    img = np.full((H, W, 3), 96, dtype=np.uint8)
    for bit in range(N_BITS):
        x0 = 8 + bit * 48
        img[40:184, x0 : x0 + 40] = 255 if (index >> bit) & 1 else 0
    return img


def _read_barcode(img: np.ndarray) -> int:
    """Inverse of :func:`_barcode` on a decoded (H, W, 3) frame."""
    value = 0
    for bit in range(N_BITS):
        x0 = 8 + bit * 48
        if img[60:164, x0 + 8 : x0 + 32].mean() > 128:
            value |= 1 << bit
    return value


def _make_video(path: Path, n: int = N_INPUT, audio: bool = False) -> Path:
    """An H.264 Matroska video of ``n`` frames at 25 fps whose frame j shows j as a barcode."""
    cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(RATE), "-i", "-"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=sample_rate=8000", "-shortest", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)]
    raw = b"".join(_barcode(j).tobytes() for j in range(n))
    subprocess.run(cmd, input=raw, check=True)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _make_video(tmp_path_factory.mktemp("video") / "1_224p.mkv")


@pytest.fixture(scope="module")
def packed(video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "frames.h5"
    extract_frames(video, out)
    return out


def _no_output_left(out: Path) -> bool:
    return not out.exists() and not any(out.parent.glob(f".{out.name}*"))


# ---- the time convention ---------------------------------------------------------------------


def test_input_barcodes_survive_h264(video, tmp_path):
    """The fixture itself: every input frame decodes back to its index."""
    proc = subprocess.run([_ffmpeg(), "-loglevel", "error", "-i", str(video), "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    decoded = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, H, W, 3)
    assert [_read_barcode(f) for f in decoded] == list(range(N_INPUT))


@pytest.mark.parametrize("fps", [2.0, 3.0])
def test_frame_i_shows_input_frame_at_time_i_over_fps(video, tmp_path, fps):
    """Frame i is the last input frame at or before i / fps s: input floor(i * 25 / fps)."""
    out = tmp_path / "f.h5"
    info = extract_frames(video, out, fps=fps)
    duration = N_INPUT / RATE
    expected_count = int(np.ceil(duration * fps))
    assert info["count"] == expected_count
    with PackedFrames(out) as pf:
        shown = [_read_barcode(f) for f in pf.read(0, pf.count)]
        assert shown == [int(np.floor(i * RATE / fps + 1e-9)) for i in range(expected_count)]
        assert [pf.time_of(i) for i in range(3)] == [0.0, 1 / fps, 2 / fps]


def test_video_starting_after_the_file_keeps_frame_times(video, tmp_path):
    """Video stream starting 0.3 s after the file (audio from 0): frame i still at i / 2 s."""
    late = tmp_path / "late.mkv"
    subprocess.run([_ffmpeg(), "-loglevel", "error", "-itsoffset", "0.3", "-i", str(video),
                    "-f", "lavfi", "-i", "sine=sample_rate=8000:duration=4.3", "-map", "0:v",
                    "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(late)], check=True)
    info = extract_frames(late, tmp_path / "late.h5")
    assert info["count"] == 9  # ceil(4.3 s * 2)
    with PackedFrames(tmp_path / "late.h5") as pf:
        shown = [_read_barcode(f) for f in pf.read(0, pf.count)]
    # frame 0 (t = 0, before the video starts) holds the first frame; then floor((i/2 - 0.3) * 25)
    assert shown == [0] + [int(np.floor((i / 2 - 0.3) * RATE + 1e-9)) for i in range(1, 9)]


# ---- file contents ---------------------------------------------------------------------------


def test_attributes_and_layout(packed, video):
    with h5py.File(packed, "r") as h5:
        attrs = dict(h5.attrs)
        offsets = h5["offsets"][:]
        data = h5["jpeg"][:]
    assert attrs["complete"]
    assert attrs["fps"] == 2.0
    assert attrs["count"] == 8
    assert attrs["duration_s"] == pytest.approx(4.0, abs=0.05)
    assert (attrs["width"], attrs["height"]) == (W, H)
    assert attrs["source"] == video.name
    assert attrs["quality"] == frames.DEFAULT_QUALITY
    assert attrs["corrupt_input_frames"] == 0
    assert offsets[0] == 0 and offsets[-1] == len(data) and np.all(np.diff(offsets) > 0)
    for i in range(8):  # every frame is a JPEG: SOI ... EOI
        jpeg = data[offsets[i] : offsets[i + 1]]
        assert bytes(jpeg[:2]) == b"\xff\xd8" and bytes(jpeg[-2:]) == b"\xff\xd9"


def test_quality_changes_size(video, tmp_path):
    best = extract_frames(video, tmp_path / "a.h5", quality=2)
    worst = extract_frames(video, tmp_path / "b.h5", quality=25)
    assert best["bytes"] > worst["bytes"]
    with PackedFrames(tmp_path / "b.h5") as pf:
        assert pf.quality == 25


def test_audio_track_is_ignored(tmp_path):
    video = _make_video(tmp_path / "av.mkv", n=50, audio=True)
    info = extract_frames(video, tmp_path / "av.h5")
    assert info["count"] == 4


# ---- reader ----------------------------------------------------------------------------------


def test_reader_shapes_dtype_and_resize(packed):
    pf = PackedFrames(packed)
    assert (pf.fps, pf.count, pf.size, len(pf)) == (2.0, 8, (H, W), 8)
    assert pf.duration_s == pytest.approx(4.0, abs=0.05)
    clip = pf.read(2, 3)
    assert clip.shape == (3, H, W, 3) and clip.dtype == np.uint8
    small = pf.read(2, 3, size=(112, 128))
    assert small.shape == (3, 112, 128, 3) and small.dtype == np.uint8
    # resizing keeps the content: the mean colour of the frames stays close
    assert abs(float(small.mean()) - float(clip.mean())) < 3.0
    assert pf.read(0, 1, size=(H, W)).shape == (1, H, W, 3)


def test_decoders_agree(packed):
    tv, pil = PackedFrames(packed, decoder="torchvision"), PackedFrames(packed, decoder="pil")
    for size in (None, (224, 224)):
        a, b = tv.read(0, 4, size=size).astype(int), pil.read(0, 4, size=size).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05
    jpegs = [bytes(j) for j in tv.read_jpegs(0, 4)]  # plain bytes are accepted too
    np.testing.assert_array_equal(frames.decode_jpegs(jpegs, decoder="torchvision"), tv.read(0, 4))
    np.testing.assert_array_equal(PackedFrames(packed).read(0, 4), tv.read(0, 4))  # auto
    assert frames.decode_jpegs([], size=(8, 9)).shape == (0, 8, 9, 3)
    with pytest.raises(ValueError, match="decoder"):
        PackedFrames(packed, decoder="cv2")


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_decoding_into_a_batch_slice_equals_decoding_alone(packed, decoder):
    """read_into writes a run's frames into a slice of a larger (B, H, W, 3) array as read() decodes them,
    leaving the rest alone; a frame of another size is refused, naming the frame."""
    import torch

    pf = PackedFrames(packed, decoder=decoder)
    for size in (None, (56, 64)):
        want = torch.from_numpy(pf.read(2, 3, size=size))
        out = torch.full((5, *want.shape[1:]), 7, dtype=torch.uint8)
        pf.read_into(2, 3, out[1:4], size)
        assert torch.equal(out[1:4], want) and (out[0] == 7).all() and (out[4] == 7).all()
    with pytest.raises(InputError, match="JPEG 0 of 2 decodes to"):
        pf.read_into(0, 2, torch.empty(2, H, W + 1, 3, dtype=torch.uint8))


def test_run_read_equals_single_frame_reads(packed):
    pf = PackedFrames(packed)
    run = pf.read(1, 6)
    singles = np.concatenate([pf.read(i, 1) for i in range(1, 7)])
    np.testing.assert_array_equal(run, singles)


def test_read_time_and_index_of(packed):
    pf = PackedFrames(packed)
    np.testing.assert_array_equal(pf.read_time(1.0, 2), pf.read(2, 2))
    assert [pf.index_of(t) for t in (0.0, 0.24, 0.25, 0.5, 3.5)] == [0, 0, 1, 1, 7]
    for i in range(pf.count):
        assert pf.index_of(pf.time_of(i)) == i


@pytest.mark.parametrize("start,count", [(-1, 2), (7, 2), (8, 1), (0, 0), (0, 9)])
def test_out_of_range_reads_raise(packed, start, count):
    pf = PackedFrames(packed)
    with pytest.raises(IndexError, match="out of range: file has 8 frames"):
        pf.read(start, count)


def _read_in_child(pf, queue):
    queue.put([pf.read(3, 2).sum(dtype=np.int64).item(), pf.read(3, 2, size=(100, 100)).shape])


def test_lazy_handle_pickle_and_fork(packed):
    pf = PackedFrames(packed)
    assert pf._h5 is None  # nothing opened before the first read
    expected = pf.read(3, 2)
    pf.read(0, 8, size=(224, 224))  # parallel torch work in the parent before the fork
    clone = pickle.loads(pickle.dumps(pf))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone.read(3, 2), expected)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(pf, queue))  # handle already open here
    child.start()
    child.join(60)
    if child.is_alive():  # a deadlock: fail, don't hang
        child.kill()
        child.join()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [expected.sum(dtype=np.int64).item(), (2, 100, 100, 3)]
    np.testing.assert_array_equal(pf.read(3, 2), expected)
    pf.close()


def test_splitter_on_arbitrary_pieces(packed):
    with h5py.File(packed, "r") as h5:
        stream, offsets = h5["jpeg"][:].tobytes(), h5["offsets"][:]
    rng = np.random.default_rng(0)
    splitter, pos = JpegSplitter(), 0
    while pos < len(stream):
        step = int(rng.integers(1, 5000))
        splitter.feed(stream[pos : pos + step])
        pos += step
    splitter.close()
    assert splitter.ends == offsets[1:].tolist()
    bad = JpegSplitter()
    bad.feed(stream[: offsets[1] + 10])
    with pytest.raises(ValueError, match="bytes after the last complete JPEG"):
        bad.close()


# ---- bad input and atomicity ----------------------------------------------------------------


def test_missing_video(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(InputError, match="nope.mkv: video file not found"):
        extract_frames(tmp_path / "nope.mkv", out)
    assert _no_output_left(out)


def test_truncated_video(video, tmp_path):
    cut = tmp_path / "cut.mkv"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "cut.h5"
    with pytest.raises(InputError) as err:
        extract_frames(cut, out)
    assert "cut.mkv" in str(err.value) and "\n" not in str(err.value)
    assert _no_output_left(out)


def test_corrupt_video(tmp_path):
    bad = tmp_path / "garbage.mkv"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    out = tmp_path / "g.h5"
    with pytest.raises(InputError, match="garbage.mkv"):
        extract_frames(bad, out)
    assert _no_output_left(out)


def test_corrupt_frames_inside_video(video, tmp_path):
    """Damage in the middle (ffmpeg conceals it and carries on): refused above the threshold."""
    data = bytearray(video.read_bytes())
    for pos in range(len(data) // 4, 3 * len(data) // 4, 500):
        data[pos] ^= 0xFF
    bad = tmp_path / "damaged.mkv"
    bad.write_bytes(bytes(data))
    out = tmp_path / "d.h5"
    with pytest.raises(InputError, match="damaged.mkv: corrupt video: the decoder reported"):
        extract_frames(bad, out)
    assert _no_output_left(out)
    info = extract_frames(bad, out, max_corrupt_fraction=1.0)
    assert info["corrupt_input_frames"] > 0
    assert PackedFrames(out).count == 8


def test_parse_ffmpeg_log():
    log = """Input #0, matroska,webm, from 'x.mkv':
  Metadata:
    ENCODER         : Lavf63.1.102
  Duration: 00:45:10.52, start: 0.000000, bitrate: 863 kb/s
  Stream #0:0: Audio: aac (LC), 44100 Hz, mono, fltp
    Metadata:
      DURATION        : 00:45:10.520000000
  Stream #0:1: Video: h264 (High), yuv420p(tv, progressive), 398x224 [SAR 1:1], 25 fps, 25 tbr, 1k tbn
    Metadata:
      DURATION        : 00:45:10.000000000
Stream mapping:
[vist#0:1/h264 @ 0x1] [dec:h264 @ 0x2] corrupt decoded frame
Output #0, image2pipe, to 'pipe:':
  Duration: 00:00:01.00
"""
    parsed = frames.parse_ffmpeg_log(log)
    assert parsed == frames.FfmpegLog(duration_s=2710.0, input_fps=25.0, corrupt_frames=1)
    no_tag = "\n".join(ln for ln in log.splitlines() if "00:45:10.000" not in ln)
    assert frames.parse_ffmpeg_log(no_tag).duration_s == pytest.approx(2710.52)
    assert frames.parse_ffmpeg_log("garbage") == frames.FfmpegLog(None, None, 0)


def test_video_without_frames(tmp_path):
    audio_only = tmp_path / "audio.mkv"
    subprocess.run([_ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "1",
                    str(audio_only)], check=True)
    out = tmp_path / "a.h5"
    with pytest.raises(InputError, match="audio.mkv: no video stream"):
        extract_frames(audio_only, out)
    assert _no_output_left(out)
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mkv"):
        extract_frames(empty, out)
    assert _no_output_left(out)


def test_failure_after_frames_written_leaves_nothing(video, tmp_path, monkeypatch):
    """An interruption after the JPEG data is written but before ``complete``: no output."""

    def boom(_jpeg):
        raise KeyboardInterrupt

    monkeypatch.setattr(frames, "_jpeg_size", boom)
    out = tmp_path / "k.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_frames(video, out)
    assert _no_output_left(out)


def test_stale_partial_and_incomplete_files(video, tmp_path):
    out = tmp_path / "f.h5"
    partial = tmp_path / ".f.h5.partial"
    partial.write_bytes(b"left by a killed job")
    with pytest.raises(InputError, match="not found"):
        PackedFrames(out)  # the .partial file does not count
    extract_frames(video, out)  # a rerun starts over cleanly
    assert not partial.exists()
    assert PackedFrames(out).count == 8
    with h5py.File(out, "a") as h5:  # a file without the final mark is refused
        del h5.attrs["complete"]
    with pytest.raises(InputError, match="incomplete"):
        PackedFrames(out)


def test_bad_arguments(video, tmp_path):
    with pytest.raises(InputError, match="quality"):
        extract_frames(video, tmp_path / "q.h5", quality=0)
    with pytest.raises(InputError, match="ffmpeg binary"):
        extract_frames(video, tmp_path / "q.h5", ffmpeg=tmp_path / "no-ffmpeg")
    assert _no_output_left(tmp_path / "q.h5")


# ---- CLI -------------------------------------------------------------------------------------


def test_cli(video, tmp_path, capsys):
    out = tmp_path / "cli" / "frames.h5"
    rc = frames.main(["--video", str(video), "--output", str(out), "--fps", "2", "--quality", "4",
                      "--ffmpeg", _ffmpeg(), "--threads", "1"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "8 frames" in line and "bytes" in line and len(line.splitlines()) == 1
    pf = PackedFrames(out)
    assert (pf.count, pf.quality) == (8, 4)
