"""A minimal TF-Serving-protocol server: `PredictionService.Predict` over gRPC on 127.0.0.1.

Usage: python serving_server.py MODEL_NAME MODEL_BASE_PATH. Like TF Serving, it serves the
highest numbered version under MODEL_BASE_PATH (the `name/version/` layout). It never imports
keras_margin, prints the port it bound on its first line, and exits when stdin closes.
"""

import os
import sys
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, name, base_path):
        version = max((p for p in Path(base_path).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))  # fmt: skip
        self.name, self.version = name, int(version.name)
        self.model = tf.saved_model.load(str(version))

    def Predict(self, request, context):  # noqa: N802 - the gRPC method name
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_spec.name!r}")
        signature_name = request.model_spec.signature_name or "serving_default"
        if signature_name not in self.model.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no signature {signature_name!r}")
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = self.model.signatures[signature_name](**inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def main():
    name, base_path = sys.argv[1:3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(name, base_path), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    assert "keras_margin" not in sys.modules
    print(port, flush=True)
    sys.stdin.read()  # the test closes stdin to stop the server
    server.stop(grace=None)


if __name__ == "__main__":
    main()
