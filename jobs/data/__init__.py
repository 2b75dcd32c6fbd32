"""The data: NIH ChestX-ray14 as NIH ships it, CLAHE, tar shards and their manifest, the loader.

- :mod:`jobs.data.labels`: the 14 findings. :mod:`jobs.data.nih`: the reader and the official split.
- :mod:`jobs.data.manifest`: a prepared dataset's hash, prefix and manifest (no OpenCV).
- :mod:`jobs.data.clahe`, :mod:`jobs.data.shards`, :mod:`jobs.data.sharding`: preprocessing into shards.
- :mod:`jobs.data.loader`: shards streamed into training batches (torch).
- :mod:`jobs.data.synthetic`: a synthetic dataset in NIH's layout, with a learnable signal.
"""
