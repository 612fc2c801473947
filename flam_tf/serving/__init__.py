"""Export to TF Serving and talk to it: signature names, SavedModel export, gRPC client, dev server."""
