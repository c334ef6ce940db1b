"""Test-only model whose initialize fails, as a model missing its weights would."""


class TritonPythonModel:
    def initialize(self, args):
        raise FileNotFoundError("weights file /nonexistent/weights.pt is missing")

    def execute(self, requests):
        raise AssertionError("never loaded, never executed")
