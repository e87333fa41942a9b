"""The one masked-language-modelling loss of the pre-training tasks (FIBER coarse, ALBEF, VLMo)."""

import torch
import torch.nn.functional as F

from fibervl.tasks.objectives import mask_tokens, masked_lm_logits, mlm_loss


def test_masked_positions_only_give_the_full_sequence_loss():
    """Projecting only the masked positions is the cross-entropy over the whole sequence with the
    unmasked positions ignored: the same value, mean and sum, and the head sees M rows only."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 9), generator=gen)
    _, labels = mask_tokens(ids, mask_token_id=4, vocab_size=50, prob=0.4, generator=gen)
    assert 0 < int((labels != -100).sum()) < labels.numel()
    feats = torch.randn(3, 9, 8, generator=gen)
    head = torch.nn.Linear(8, 50)
    seen = []

    def mlm_head(x):
        seen.append(x.shape[0])
        return head(x)

    logits, targets = masked_lm_logits(mlm_head, feats, labels)
    assert seen == [int((labels != -100).sum())] and logits.dtype == torch.float32
    full = head(feats)
    expected = F.cross_entropy(full.reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mlm_loss(logits, targets), expected)
    torch.testing.assert_close(mlm_loss(logits, targets, reduction="sum"),
                               expected * int((labels != -100).sum()))
