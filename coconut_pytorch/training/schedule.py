"""The paper's multi-stage curriculum: which stage each epoch trains, and how many language steps an example keeps
and how many thoughts replace them at a stage, for Coconut and for the paper's baselines and ablations.

Stage 0 is full language chain-of-thought: question -> steps -> answer, loss on steps and answer.
Stage k replaces the first k language steps by k x c continuous thoughts (c = thoughts per step); the remaining
steps and the answer stay in language, with loss. With `tokens_per_stage` r, a stage removes r tokens instead of a
step, and with `compress_thoughts` the run goes on past the last removal stage through stages at which fewer
thoughts (c' < c) stand for each r tokens. Every method below is the same Coconut model fed differently:

    coconut                 the curriculum, continuous thoughts
    coconut_no_curriculum   the last stage from the first epoch
    no_thoughts             the curriculum removes steps but puts no thought in their place
    pause_as_thought        the curriculum, with learned pause embeddings in the thought slots
    pause                   no steps, max_latent_stage x c pause embeddings before the answer, from the start
    cot                     stage 0 throughout
    no_cot                  question -> answer

`batches` turns examples into tensors at a stage by these rules.

Names, one per quantity across training: c is `thoughts_per_step` (the paper's `c_thought`); an example's thought count
is `num_thoughts` (what `Coconut.forward` takes per row as `num_reasoning_steps`, the model being built with one latent
per reasoning step: its `num_latents_per_step`, the 0.0.32 argument, is another quantity and stays 1 here); an
example's language steps are `num_language_steps`; a batch runs as many thought passes as its most thoughts.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ('coconut', 'coconut_no_curriculum', 'no_thoughts', 'pause_as_thought', 'pause', 'cot', 'no_cot')

PAUSE_METHODS = ('pause', 'pause_as_thought')


@dataclass(frozen = True)
class Curriculum:
    """When each stage runs and what an example looks like at a stage.

    Args:
        method: one of METHODS.
        thoughts_per_step: c, continuous thoughts that replace one language step.
        max_latent_stage: the last stage (number of steps replaced); later steps stay in language.
        epochs_per_stage: epochs spent at each stage before the next.
        pad_latent_to_max: an example with fewer steps than the stage still gets stage x c thoughts
            (True), or only as many as its own steps (False).
        uniform_prob: probability that an example is drawn at a uniformly random stage <= final_stage
            instead of the current one (the paper's mixing of earlier stages; compression stages included).
        one_thought_at_a_time: stages add one thought at a time instead of c (a step leaves language once
            its c thoughts are in); the paper's authors report that adding more than 2 at a switch destabilises.
        tokens_per_stage: r; each stage removes the next r tokens of the language steps (separators counted)
            instead of the next whole step, and curriculum methods put c thoughts in place of each r tokens.
            With `no_thoughts` this is iCoT's stepwise internalization (Deng et al., 2024). `max_latent_stage`
            then counts stages of r tokens.
        removal_smoothing: lambda of iCoT's removal smoothing (with `tokens_per_stage`): each example loses
            o more tokens than its stage says, o drawn with P(o) proportional to exp(-lambda o) (iCoT uses 4, so
            about 2% of examples see a later stage's removal early). None: no smoothing.
        compress_thoughts: with `tokens_per_stage` and `coconut` or `pause_as_thought`: after the last removal stage
            (`max_latent_stage`, which removes all language), one more stage per value c', each `compress_epochs`
            epochs long (the last continues for the final epochs), at which c' thoughts instead of c take the place
            of each r tokens (strictly decreasing, each from 1 to c - 1): (4, 2) with r = c = 8 compresses one
            thought a token to 2 tokens a thought, then 4. Thought k of c' over a group of L tokens (L = r, or
            fewer in an example's last group) replaces tokens [floor(L k / c'), floor(L (k + 1) / c')) of it, the
            split `batches.words_per_thought` makes at every stage: L / c' each when c' divides L, otherwise the
            later thoughts of the group take one more (8 tokens over 3 thoughts: 2, 3, 3). () (the default): no
            compression stages, the schedule as without the option.
        compress_epochs: epochs at each compression stage (None: `epochs_per_stage`). A switch to fewer thoughts
            costs more than a removal stage does (at 3x3, token accuracy fell from 0.99 to 0.43 and took about 20
            epochs to come back, RESULTS.md), so these stages may need to be longer than the removal stages.
    """

    method: str = 'coconut'
    thoughts_per_step: int = 1
    max_latent_stage: int = 3
    epochs_per_stage: int = 3
    pad_latent_to_max: bool = False
    uniform_prob: float = 0.
    one_thought_at_a_time: bool = False
    tokens_per_stage: int | None = None
    removal_smoothing: float | None = None
    compress_thoughts: tuple[int, ...] = ()
    compress_epochs: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
        for name in ('thoughts_per_step', 'epochs_per_stage'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if not isinstance(self.max_latent_stage, int) or self.max_latent_stage < 0:
            raise ValueError(f'max_latent_stage must be an int >= 0, got {self.max_latent_stage!r}')
        if not 0. <= self.uniform_prob <= 1.:
            raise ValueError(f'uniform_prob must be in [0, 1], got {self.uniform_prob}')
        if self.tokens_per_stage is not None:
            if not isinstance(self.tokens_per_stage, int) or isinstance(self.tokens_per_stage, bool) or self.tokens_per_stage < 1:
                raise ValueError(f'tokens_per_stage must be a positive int or None, got {self.tokens_per_stage!r}')
            if self.one_thought_at_a_time:
                raise ValueError('tokens_per_stage and one_thought_at_a_time cannot be combined: a stage is already r tokens and c thoughts')
        if self.removal_smoothing is not None:
            if self.tokens_per_stage is None:
                raise ValueError('removal_smoothing needs tokens_per_stage: it smooths the removal of tokens')
            if isinstance(self.removal_smoothing, bool) or not isinstance(self.removal_smoothing, (int, float)) or not self.removal_smoothing > 0:
                raise ValueError(f'removal_smoothing must be a number > 0 (a rate lambda) or None, got {self.removal_smoothing!r}')
        self.check_compression()

    def check_compression(self):
        """Raise a ValueError naming `compress_thoughts` unless it is () or a strictly decreasing tuple of ints in
        [1, c) for a method whose curriculum puts thoughts in place of tokens (a list is taken as its tuple), or
        naming `compress_epochs` unless it is None or (with compression stages) a positive int."""
        values = self.compress_thoughts
        if isinstance(values, list):
            values = tuple(values)
            object.__setattr__(self, 'compress_thoughts', values)     # frozen, and hashed (`batches.unpadded`)
        if not isinstance(values, tuple) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise ValueError(f'compress_thoughts must be integers (a tuple), got {values!r}')
        epochs = self.compress_epochs
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise ValueError(f'compress_epochs must be a positive int or None, got {epochs!r}')
        if not values:
            if epochs is not None:
                raise ValueError('compress_epochs sets the length of the compression stages: give compress_thoughts too')
            return
        if self.tokens_per_stage is None:
            raise ValueError('compress_thoughts needs tokens_per_stage: it sets how many thoughts replace each r tokens')
        if self.method not in ('coconut', 'pause_as_thought'):
            raise ValueError(f"compress_thoughts adds stages to a curriculum with thoughts: method must be 'coconut' or "
                             f"'pause_as_thought', got {self.method!r}")
        c = self.thoughts_per_step
        if any(not 1 <= v < c for v in values):
            raise ValueError(f'compress_thoughts: each value must be from 1 to thoughts_per_step - 1 = {c - 1} (fewer '
                             f'thoughts than c in place of each r tokens), got {values!r}')
        if any(later >= earlier for earlier, later in zip(values, values[1:])):
            raise ValueError(f'compress_thoughts must be strictly decreasing (each stage fewer thoughts), got {values!r}')

    @property
    def uses_curriculum(self) -> bool:
        return self.method in ('coconut', 'no_thoughts', 'pause_as_thought')

    @property
    def thought_mode(self) -> str:
        return 'pause' if self.method in PAUSE_METHODS else 'continuous'

    @property
    def num_stages(self) -> int:
        """Stages the curriculum walks through, the final one included."""
        if not self.uses_curriculum:
            return 1
        units = self.thoughts_per_step if self.one_thought_at_a_time else 1
        return self.max_latent_stage * units + 1 + len(self.compress_thoughts)

    @property
    def epochs_per_compression_stage(self) -> int:
        return self.compress_epochs if self.compress_epochs is not None else self.epochs_per_stage

    @property
    def total_epochs(self) -> int:
        compression = len(self.compress_thoughts) if self.uses_curriculum else 0
        return (self.num_stages - compression) * self.epochs_per_stage + compression * self.epochs_per_compression_stage

    def stage_at_epoch(self, epoch: int) -> int:
        """Stage index for an epoch; the final stage continues past the schedule."""
        if not self.uses_curriculum:
            return self.final_stage
        removal_epochs = (self.last_removal_stage + 1) * self.epochs_per_stage
        if epoch < removal_epochs:
            return epoch // self.epochs_per_stage
        # compression stages (if any) after the removal stages, each `compress_epochs` long
        return min(self.last_removal_stage + 1 + (epoch - removal_epochs) // self.epochs_per_compression_stage, self.final_stage)

    @property
    def final_stage(self) -> int:
        return self.num_stages - 1 if self.uses_curriculum else 0

    @property
    def last_removal_stage(self) -> int:
        """The stage that drops the last of the language: `final_stage`, or the one before the compression stages."""
        return self.final_stage - len(self.compress_thoughts)

    def thoughts_per_group(self, stage: int) -> int:
        """The thoughts in place of each piece of language at `stage`: c, or at a compression stage its c'."""
        if self.compress_thoughts and stage > self.last_removal_stage:
            return self.compress_thoughts[min(stage, self.final_stage) - self.last_removal_stage - 1]
        return self.thoughts_per_step

    def most_thoughts(self, stage: int) -> int:
        """The thoughts an example of the most language gets at `stage`: what a model trained up to it thinks at
        inference (`checkpoints.inference_info`)."""
        if self.compress_thoughts:
            return self.token_layout(stage, 10 ** 9)[1]
        return self.layout(stage, num_language_steps = 10 ** 6)[1]

    def layout(self, stage: int, num_language_steps: int) -> tuple[int, int]:
        """(language steps removed, thoughts) for an example with `num_language_steps` language steps at `stage`."""
        c, method = self.thoughts_per_step, self.method

        if method == 'cot':
            return 0, 0
        if method == 'no_cot':
            return num_language_steps, 0
        if method == 'pause':
            return num_language_steps, self.max_latent_stage * c
        if method == 'coconut_no_curriculum':
            thoughts = self.max_latent_stage if self.pad_latent_to_max else min(self.max_latent_stage, num_language_steps)
            return num_language_steps, thoughts * c

        # curriculum methods; a stage counts thoughts when they come one at a time
        thought_units = stage if self.one_thought_at_a_time else stage * c
        removed = min(thought_units // c, num_language_steps)

        if self.pad_latent_to_max:
            thoughts = thought_units
        else:
            thoughts = min(thought_units, num_language_steps * c)

        if stage == self.final_stage:
            # as in the paper, the last stage drops whatever language steps remain: thoughts, then the answer
            removed = num_language_steps

        if method == 'no_thoughts':
            thoughts = 0
        return removed, thoughts

    def token_layout(self, stage: int, num_language_tokens: int, extra_removed: int = 0) -> tuple[int, int]:
        """(language tokens removed, thoughts) at `stage` for an example whose steps take `num_language_tokens`
        tokens, separators included (curriculum methods with `tokens_per_stage`); `extra_removed` is removal
        smoothing's offset, which removes tokens early but adds no thoughts."""
        r, c = self.tokens_per_stage, self.thoughts_per_group(stage)
        if stage == self.last_removal_stage:
            removed = num_language_tokens       # as in the paper, the last removal stage drops what language remains
        elif self.compress_thoughts and stage > self.last_removal_stage:
            # a compression stage: no language, and the last removal stage's groups of r tokens, each in c' thoughts
            removed, stage = num_language_tokens, self.last_removal_stage
        else:
            removed = min(stage * r + extra_removed, num_language_tokens)
        thoughts = stage * c if self.pad_latent_to_max else min(stage, -(-num_language_tokens // r)) * c
        return removed, 0 if self.method == 'no_thoughts' else thoughts


# methods whose thought slots can be aligned with the language they replaced: fed-back hidden states, or (the
# supervised pause control) the outputs at the pause slots, which feed nothing back
ALIGNABLE_METHODS = ('coconut', 'coconut_no_curriculum', 'pause_as_thought', 'pause')

# methods whose thoughts are hidden states fed back as the next input: what the latent alignment options act on
# (`TrainConfig.align_mse`, `align_cosine`, `thought_rms_match`, `mix_start`)
FEEDBACK_METHODS = ('coconut', 'coconut_no_curriculum')


def thought_mix_at_epoch(curriculum: Curriculum, epoch: int, mix_start: float, mix_epochs: int) -> float:
    """w of the embedding-mixing schedule (`Coconut.forward`'s `thought_mix`) at `epoch`: `mix_start` at the first
    epoch of each stage, then linearly down to 0 over `mix_epochs` epochs (0 from the `mix_epochs`-th epoch of the
    stage on); constant within an epoch."""
    if mix_start == 0 or mix_epochs == 0:
        return 0.
    stage = curriculum.stage_at_epoch(epoch)
    first = next(e for e in range(epoch + 1) if curriculum.stage_at_epoch(e) == stage)
    return mix_start * max(0., 1. - (epoch - first) / mix_epochs)
