"""The hand-built agent graph that the edge tests run (tests/fixtures/edge_support.py) keeps the contract."""

import numpy as np

from tests.fixtures.edge_support import make_agent_onnx


def test_helper_graph_runs_and_matches_the_contract() -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(make_agent_onnx(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"obs": np.zeros((4, 16, 16, 3), np.uint8), "noise": np.zeros((4, 2), np.float32)})
    shapes = {o.name: v.shape for o, v in zip(sess.get_outputs(), outs, strict=True)}
    assert shapes == {
        "a_on": (4, 2),
        "a_off": (4, 2),
        "q_r": (4, 2),
        "q_c": (4, 2),
        "q_h": (4, 5),
        "candidates": (4, 5, 2),
    }
