"""Training data and test sets for LM sweeps: domains -> tokenizer -> token memmaps + test suite.

    cfg = DataConfig.from_sections(Section(yaml.get("data"), "data"),
                                   Section(yaml.get("test_sets"), "test_sets"))
    data = PreparedData.load(prepare_data(cfg))      # builds once per cfg.fingerprint()
    batch = MixtureSampler(data.train, weights, cfg.seq_len, seed).batch(step, 32)

Modules: `config` (YAML blocks), `corpus` (built-in offline domains), `sources` (hub / local
files through `datasets`), `tokenizer`, `testsets` + `benchmarks` + `suite` (the fixed test
suite), `plan` (the shards and their fingerprints, cheap) + `shards` (preparation as stages:
tokenizer, one task per shard, finalize; `prepare_data` runs them serially) + `streams`
(reading a shard) + `tokens` (the concatenated view), `cache` (load), `mixture` (the sampler). docs/data.md describes the on-disk layout.
"""
from s2l.data.cache import PreparedData
from s2l.data.shards import prepare_data
from s2l.data.config import DataConfig, DomainConfig, TestSetConfig
from s2l.data.mixture import MixtureSampler
from s2l.data.testsets import Sample, TestSuite

__all__ = ["DataConfig", "DomainConfig", "TestSetConfig", "prepare_data", "PreparedData",
           "MixtureSampler", "TestSuite", "Sample"]
