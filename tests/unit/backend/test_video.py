"""Video controls on real model output: shapes moving through a synthetic video are tracked
(VideoRectangle), and frames are classified into timeline ranges (TimelineLabels)."""

from __future__ import annotations

import base64

import numpy as np

from prelabel_backend import synthetic
from prelabel_backend.app import Backend, create_app

VIDEO_CONFIG = """<View><Video name="video" value="$video"/>
  <Labels name="videoLabels" toName="video">
    <Label value="Square" predicted_values="square"/><Label value="Circle" predicted_values="circle"/><Label value="Triangle" predicted_values="triangle"/>
  </Labels>
  <VideoRectangle name="box" toName="video" model_score_threshold="0.25"/>
</View>"""
TIMELINE_CONFIG = """<View><Video name="video" value="$video"/>
  <TimelineLabels name="timeline" toName="video"><Label value="square"/><Label value="circle"/><Label value="triangle"/></TimelineLabels>
</View>"""


def video_uri(frames: list[synthetic.Scene], tmp_path) -> str:  # noqa: ANN001
    path = tmp_path / "clip.mp4"
    synthetic.encode_mp4(frames, str(path), fps=10)
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def client(settings, store):  # noqa: ANN001, ANN201
    backend = Backend(settings, store)
    return create_app(settings, backend, load="none").test_client()


def test_video_rectangles_follow_each_moving_shape(settings, store, tmp_path) -> None:  # noqa: ANN001
    frames = synthetic.make_video(np.random.default_rng(601), frames=12, step=(2.0, 1.0), count=(2, 3))
    task = {"id": 1, "data": {"video": video_uri(frames, tmp_path)}}
    (result,) = client(settings, store).post("/predict", json={"tasks": [task], "label_config": VIDEO_CONFIG}).get_json()["results"]
    regions = result["result"]
    assert len(regions) == len(frames[0].shapes)  # one track per shape
    titles = {"square": "Square", "circle": "Circle", "triangle": "Triangle"}
    for shape_index, shape in enumerate(frames[0].shapes):
        track = [r for r in regions if r["value"]["labels"] == [titles[shape.cls]]
                 and abs(r["value"]["sequence"][0]["x"] - shape.box()[0] / frames[0].width * 100) < 6]
        assert track, (shape, regions)
        value = track[0]["value"]
        assert value["framesCount"] == 12 and track[0]["type"] == "videorectangle" and track[0]["from_name"] == "box"
        sequence = value["sequence"]
        assert len(sequence) >= 10 and sequence[-1]["enabled"] is False and sequence[0]["frame"] == 1
        last = frames[sequence[-1]["frame"] - 1].shapes[shape_index].box()
        assert abs(sequence[-1]["x"] - last[0] / frames[0].width * 100) < 6  # it moved with the shape


def test_timeline_labels_cover_the_frames_of_the_shape(settings, store, tmp_path) -> None:  # noqa: ANN001
    frames = synthetic.make_video(np.random.default_rng(602), frames=10, step=(1.0, 0.0), width=128, height=128,
                                  count=(1, 1), size=(40.0, 70.0))
    task = {"id": 1, "data": {"video": video_uri(frames, tmp_path)}}
    (result,) = client(settings, store).post("/predict", json={"tasks": [task], "label_config": TIMELINE_CONFIG}).get_json()["results"]
    truth = frames[0].shapes[0].cls
    covered = sum(r["value"]["ranges"][0]["end"] - r["value"]["ranges"][0]["start"] + 1
                  for r in result["result"] if r["value"]["timelinelabels"] == [truth])
    assert covered >= 8, result
    assert all(r["type"] == "timelinelabels" and r["from_name"] == "timeline" for r in result["result"])


def test_a_broken_video_empties_only_its_task(settings, store) -> None:  # noqa: ANN001
    task = {"id": 1, "data": {"video": "data:video/mp4;base64," + base64.b64encode(b"not a video").decode()}}
    response = client(settings, store).post("/predict", json={"tasks": [task], "label_config": VIDEO_CONFIG})
    assert response.status_code == 200 and response.get_json()["results"][0]["result"] == []
