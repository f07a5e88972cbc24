"""Every built-in strategy passes the contract third-party strategies are held to (runner.testing)."""

import pytest

from runner.testing import StrategyContract

pytestmark = pytest.mark.slow

HEADS = ("score.", "classifier.", "lm_head.")


def adapter_or_head(*markers):
    return lambda self, name: any(m in name for m in (*markers, "modules_to_save"))


class TestFull(StrategyContract):
    strategy = {"type": "full"}
    freezes_base = False


class TestFreeze(StrategyContract):
    strategy = {"type": "freeze", "train_last_layers": 1}

    def trains(self, name):
        last_layer = (".h.1.", ".layers.1.", ".layer.1.")
        return name.startswith(HEADS) or any(marker in name for marker in last_layer)


class TestLora(StrategyContract):
    strategy = {"type": "lora", "r": 4}
    trains = adapter_or_head("lora_")


class TestDora(StrategyContract):
    strategy = {"type": "lora", "r": 4, "use_dora": True, "use_rslora": True}
    architectures = ("llama",)
    trains = adapter_or_head("lora_")


class TestIA3(StrategyContract):
    strategy = {"type": "ia3"}
    learning_rate = 5e-2
    trains = adapter_or_head("ia3_l")


class TestLoHa(StrategyContract):
    strategy = {"type": "loha", "r": 4}
    architectures = ("bert", "llama")  # peft's LoHa cannot adapt GPT-2's Conv1D layers
    trains = adapter_or_head("hada_")


class TestLoKr(StrategyContract):
    strategy = {"type": "lokr", "r": 4}
    architectures = ("bert", "llama")
    trains = adapter_or_head("lokr_")


class TestPrefixTuning(StrategyContract):
    strategy = {"type": "prefix_tuning", "num_virtual_tokens": 4}
    trains = adapter_or_head("prompt_encoder")


class TestPromptTuning(StrategyContract):
    strategy = {"type": "prompt_tuning", "num_virtual_tokens": 4}
    trains = adapter_or_head("prompt_encoder")


class TestPTuning(StrategyContract):
    strategy = {"type": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16}
    trains = adapter_or_head("prompt_encoder")


def test_loha_on_gpt2_is_a_clear_error(tmp_path):
    from runner.errors import FinetuneError

    with pytest.raises(FinetuneError, match="cannot adapt this 'gpt2' model"):
        TestLoHa().adapted("gpt2", "sequence_classification", tmp_path)
