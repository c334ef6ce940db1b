"""A BLS model calling two others by name: Y = three_instances(nobatch_auto(X, X).OUTPUT0).Y = 20 X."""

import triton_python_backend_utils as pb_utils


def call(model, inputs, output):
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=[output]).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            doubled = call("nobatch_auto", [pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)], "OUTPUT0")
            y = call("three_instances", [pb_utils.Tensor("X", doubled)], "Y")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return responses
