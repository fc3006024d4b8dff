"""Hugging Face task pipelines as a registry kind (`kind: pipeline` in the models file).

Interface (stable; other services build on it):

- `gateway.specs.PipelineSpec(SpecBase)`: `kind: "pipeline"`, `task`, `source`, `revision`, `device`, `dtype`,
  `batch_size`, `batch_wait_ms`, `max_concurrency`, `parameters` (call defaults), `trust_remote_code`.
- `PipelineKind` (gateway/pipelines/kind.py) loads the entry in the registry's loading thread; its handle is a
  `PipelineHandle` with
    - `.pipeline`: the transformers Pipeline (for the tasks transformers 5 dropped — translation, summarization,
      text2text-generation, question-answering — a small runner called the same way, see seq2seq.py / qa.py),
    - `.task`: the canonical task (`sentiment-analysis` → `text-classification`, `ner` → `token-classification`,
      `translation_en_to_fr` → `translation`),
    - `async run(inputs, parameters)`: the pipeline's own output for `inputs` (one input or a list), computed in a
      worker thread under the entry's `max_concurrency`; single inputs arriving together share one batched call.
      Raises `PipelineInputError` (a 400) for input the pipeline rejects.
- Capabilities: `PIPELINE` ("pipeline") plus the canonical task name (e.g. "automatic-speech-recognition"), so a
  route takes `await registry.acquire(model_id, "automatic-speech-recognition")` and a model of another task gets
  the registry's 400 naming what it can do.

This package's top level imports no torch: the HTTP layer may import it.
"""

from gateway.pipelines.tasks import ASR, PIPELINE, PipelineInputError, canonical_task, task_capabilities

__all__ = ["ASR", "PIPELINE", "PipelineInputError", "canonical_task", "task_capabilities"]
