"""SavedModel export: plain exports serve without keras_margin; loss endpoints are opt-in."""

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tasks import make_task

import keras_margin
from keras_margin import losses

PROBE = Path(__file__).with_name("saved_model_probe.py")
LOSSES = {
    "hinge": losses.Hinge(),
    "squared_hinge": losses.SquaredHinge(),
    "categorical_hinge": losses.CategoricalHinge(),
    "gce": losses.CategoricalGeneralizedCrossEntropy(),
    "circle": losses.Circle(),
}


def probe_in_fresh_process(requests):
    result = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(requests)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def trained(task, loss):
    model, x, y = make_task(task)
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    return model, x, y


def test_model_export_serves_without_keras_margin(tmp_path):
    requests, expected = {}, {}
    for name, loss in LOSSES.items():
        model, x, _ = trained(name, loss)
        path = str(tmp_path / name)
        model.export(path, verbose=False)
        np.savez(path + ".npz", x=x)
        requests[name] = {"path": path, "signature": "serve", "inputs": {"inputs": "x"},
                          "npz": path + ".npz"}  # fmt: skip
        expected[name] = model.predict(x, verbose=0)

    replies = probe_in_fresh_process(requests)
    for name, reply in replies.items():
        assert "error" not in reply, reply.get("error")
        assert not [op for op in reply["op_types"] if op.startswith("KerasMargin")], name
        (output,) = reply["outputs"].values()
        np.testing.assert_allclose(output, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def export_with_loss_endpoint(path, loss):
    model, x, y = trained("circle", losses.Circle())
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [tf.TensorSpec([None, 6], tf.float32)])
    keras_margin.export.add_loss_endpoint(archive, model, loss, tf.TensorSpec([None], tf.int64))
    archive.write_out(path, verbose=False)
    np.savez(path + ".npz", x=x, y=y)
    request = {"path": path, "signature": "compute_loss", "inputs": {"inputs": "x", "labels": "y"},
               "npz": path + ".npz"}  # fmt: skip
    return request, float(loss(y, model(x)))


def test_loss_endpoint_uses_stock_ops_by_default(tmp_path):
    request, expected = export_with_loss_endpoint(str(tmp_path / "auto"), losses.Circle())
    reply = probe_in_fresh_process({"auto": request})["auto"]
    assert "error" not in reply, reply.get("error")
    assert not [op for op in reply["op_types"] if op.startswith("KerasMargin")]
    np.testing.assert_allclose(reply["outputs"]["loss"], expected, rtol=1e-5)


def test_fused_loss_endpoint_needs_the_op_library(tmp_path):
    request, expected = export_with_loss_endpoint(
        str(tmp_path / "fused"), losses.Circle(implementation="fused")
    )
    reply = probe_in_fresh_process({"fused": request})["fused"]
    assert "KerasMargin>CircleLoss" in reply["op_types"]
    assert "not registered" in reply["error"] or "KerasMargin" in reply["error"]

    # With the op library loaded first, the same SavedModel loads and computes the loss.
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from keras_margin.ops import custom_op_available\n"
        "assert custom_op_available()\n"
        f"data = np.load({request['npz']!r})\n"
        f"fn = tf.saved_model.load({request['path']!r}).signatures['compute_loss']\n"
        "print(float(fn(inputs=tf.constant(data['x']), labels=tf.constant(data['y']))['loss']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(float(result.stdout.strip().splitlines()[-1]), expected, rtol=1e-4)


def test_add_loss_endpoint_rejects_bad_arguments():
    model, _, _ = make_task("circle")
    archive = keras.export.ExportArchive()
    archive.track(model)
    with pytest.raises(TypeError, match="`label_spec`"):
        keras_margin.export.add_loss_endpoint(archive, model, losses.Circle(), label_spec=[None])


def test_saved_model_cli_runs_the_export(tmp_path):
    model, x, _ = trained("circle", losses.Circle())
    model.export(str(tmp_path / "model"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        ["saved_model_cli", "run", "--dir", str(tmp_path / "model"), "--tag_set", "serve",
         "--signature_def", "serve", "--inputs", f"inputs={tmp_path / 'x.npy'}",
         "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = list((tmp_path / "out").glob("*.npy"))
    np.testing.assert_allclose(np.load(output), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_tf_serving_predict_over_grpc(tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model, x, _ = trained("circle", losses.Circle())
    model.export(str(tmp_path / "embedder" / "1"), verbose=False)
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("serving_server.py")), "embedder",
         str(tmp_path / "embedder")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    reader = concurrent.futures.ThreadPoolExecutor(1)
    try:
        port = int(reader.submit(server.stdout.readline).result(timeout=120))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "embedder"
            request.model_spec.signature_name = "serve"
            request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(x))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=60)
        (output,) = response.outputs.values()
        assert response.model_spec.version.value == 1
        np.testing.assert_allclose(
            tf.make_ndarray(output), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        reader.shutdown(wait=False)
