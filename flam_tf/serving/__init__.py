"""Export to TF Serving and talk to it. The top-level `export/` and `serving/` folders are the
command lines over this package (`python -m export` -> export.py; `python -m serving.client` ->
client_cli.py, `serving.dev_server` -> dev_server.py, `serving.index` -> index_cli.py,
`serving.check_export` -> dev_server.py and client.py).

Each module imports only those listed before it (and `flam_tf.models.searcher`, the search itself):

    signatures.py     public names: models, signatures, tensors, request limits
    models_config.py  read and write TF Serving's models.config
    closing.py        `with` support for FlamClient and CatalogIndex
    cli_io.py         query files in, search result tables out (the command lines)
    preprocessing.py  in-graph image decoding and input checks of the signatures
    edits.py          the manipulator's attribute/value parser
    archives.py       the extractor, manipulator and searcher as keras ExportArchives
    warmup.py         warm-up request files (assets.extra/tf_serving_warmup_requests)
    versions.py       version folders on disk, the export lock, clean-up of killed exports
    export.py         export_run: a run directory -> E/<model>/<V>/ + E/models.config
    servables.py      load the models a models.config names and run PredictRequests
    dev_server.py     a local gRPC server speaking TF Serving's API over servables.py
    client.py         FlamClient, the gRPC client (one model version for all three models)
    catalog_index.py  the gallery in Milvus: items added and removed without a new export
    client_cli.py     `python -m serving.client`
    index_cli.py      `python -m serving.index`
"""
