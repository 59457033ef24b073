"""The evaluation harness: tasks (data, label verbalisers, English and Portuguese prompt templates) and
variants (zero-shot, few-shot, fine-tuned with each method, distilled, cross-lingual) evaluated side by side
on the same split with the same metrics and costs. Not built yet."""
