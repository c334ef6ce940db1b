"""The digits demo (model_repository/): data, network and preprocessing. Not part of the product."""
