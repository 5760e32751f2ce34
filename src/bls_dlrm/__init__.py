"""bls-dlrm: bounded lag synchronous (BLS) collectives for distributed inference-only DLRM.

Components, in the paper's terms (see README.md for the map):

- :mod:`bls_dlrm.comm`     the BLS alltoallv engine, synchronous baselines, torch backend "bls"
- :mod:`bls_dlrm.model`    DLRM inference model with sharded embedding tables
- :mod:`bls_dlrm.data`     synthetic and Criteo datasets in one batch format
- :mod:`bls_dlrm.delays`   delay schedules injected into the inference loop
- :mod:`bls_dlrm.run.infer`    one rank's distributed inference loop
- :mod:`bls_dlrm.logs.records`  JSON-lines run logs
- :mod:`bls_dlrm.analysis.tables`   logs -> tidy tables
- :mod:`bls_dlrm.theory`   ideal makespan under a lag bound
"""

__version__ = "0.1.0"
