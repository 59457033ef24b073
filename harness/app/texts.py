"""Every label, help text and explanation of the page, in English and Portuguese (Brazilian)."""

from __future__ import annotations

LANGUAGES = {"en": "English", "pt": "Português"}

TEXTS: dict[str, tuple[str, str]] = {
    "title": ("# tljax: transfer learning, side by side",
              "# tljax: aprendizado por transferência, lado a lado"),
    "subtitle": ("Zero-shot, few-shot and fine-tuned variants of one pre-trained model answer the same text.",
                 "Variantes zero-shot, few-shot e ajustadas de um mesmo modelo pré-treinado respondem ao mesmo texto."),
    "page_language": ("Page language", "Idioma da página"),
    "refresh": ("Refresh runs and results", "Atualizar execuções e resultados"),
    "tab_side": ("Side by side", "Lado a lado"),
    "tab_arena": ("Blind comparison", "Comparação às cegas"),
    "tab_results": ("Results", "Resultados"),
    "tab_runs": ("Runs", "Execuções"),
    "tab_train": ("Train", "Treinar"),
    "tab_methods": ("Methods", "Métodos"),
    "base": ("Base model", "Modelo base"),
    "task": ("Task", "Tarefa"),
    "message_language": ("Language of the message", "Idioma da mensagem"),
    "variant": ("Variant", "Variante"),
    "none": ("(none)", "(nenhuma)"),
    "message": ("Your message: a review, any text whose entities you want, or a passage to ask about, in English or "
                "Portuguese",
                "Sua mensagem: uma avaliação, qualquer texto cujas entidades você queira, ou um texto sobre o qual "
                "perguntar, em inglês ou português"),
    "question": ("Your question about the passage (the message)", "Sua pergunta sobre o texto (a mensagem)"),
    "question_placeholder": ("Ask something the passage may answer and press Enter",
                             "Pergunte algo que o texto possa responder e tecle Enter"),
    "empty_question": ("Type a question first: an answer task asks it about the message, its passage.",
                       "Escreva uma pergunta primeiro: uma tarefa de perguntas a faz sobre a mensagem, o texto."),
    "answer": ("Answer", "Resposta"),
    "no_answer": ("No answer", "Sem resposta"),
    "passage_silent": ("the passage does not answer this", "o texto não responde a isto"),
    "answer_elsewhere": ("not in the passage as written, so nothing is marked",
                         "não está no texto como escrito, então nada foi marcado"),
    "score_probability": ("probability", "probabilidade"),
    "score_similarity": ("similarity", "similaridade"),
    "placeholder": ("Type a review and press Enter", "Escreva uma avaliação e tecle Enter"),
    "send": ("Send", "Enviar"),
    "regenerate": ("Regenerate", "Gerar de novo"),
    "clear": ("Clear", "Limpar"),
    "examples": ("Examples", "Exemplos"),
    "qa_examples": ("Examples of questions about a passage (question answering)",
                    "Exemplos de perguntas sobre um texto (perguntas e respostas)"),
    "probabilities": ("Probability of each label", "Probabilidade de cada rótulo"),
    "reply": ("Reply", "Resposta"),
    "no_entities": ("No entities found", "Nenhuma entidade encontrada"),
    "entities": ("Entities in the message", "Entidades na mensagem"),
    "train_task": ("Task", "Tarefa"),
    "task_labels": ("A label per text", "Um rótulo por texto"),
    "task_entities": ("Named entities (NER)", "Entidades nomeadas (NER)"),
    "task_answers": ("Questions about a passage (extractive QA)", "Perguntas sobre um texto (QA extrativo)"),
    "qa_no_labels": ("a question-answering run has no labels (its answers are spans of the passage); leave the "
                     "labels empty", "uma execução de perguntas e respostas não tem rótulos (as respostas são trechos "
                     "do texto); deixe os rótulos vazios"),
    "upload_kind": ("this task does not read {suffix} files; upload one of: {valid}",
                    "esta tarefa não lê arquivos {suffix}; envie um destes: {valid}"),
    "entity_table": ("Named entities (entity F1)", "Entidades nomeadas (F1 de entidades)"),
    "answer_table": ("Question answering (SQuAD F1 and exact match)",
                     "Perguntas e respostas (F1 e correspondência exata do SQuAD)"),
    "arena_kind": ("What the variants are asked", "O que se pergunta às variantes"),
    "kind_sentiment": ("Sentiment", "Sentimento"),
    "kind_entities": ("Named entities", "Entidades nomeadas"),
    "kind_answers": ("Question answering", "Perguntas e respostas"),
    "too_few_variants": ("a blind comparison needs two variants that answer this task",
                         "uma comparação às cegas precisa de duas variantes que respondam a esta tarefa"),
    "does_not_fit": ("this variant does not answer the task", "esta variante não responde à tarefa"),
    "fits_entities": ("an entity task takes a token-classification run with the task's types, an encoder's "
                      "few-shot (a tag classifier) or a decoder's zero- or few-shot",
                      "uma tarefa de entidades aceita uma execução de classificação de tokens com os tipos da tarefa, "
                      "o few-shot de um encoder (um classificador de etiquetas) ou o zero- ou few-shot de um decoder"),
    "fits_answers": ("an answer task takes a question-answering run, an encoder's zero-shot (the passage sentence "
                     "most similar to the question) or a decoder's zero- or few-shot",
                     "uma tarefa de perguntas aceita uma execução de perguntas e respostas, o zero-shot de um encoder "
                     "(a frase do texto mais parecida com a pergunta) ou o zero- ou few-shot de um decoder"),
    "entities_found": ("Entities ({n}): {types}", "Entidades ({n}): {types}"),
    "empty": ("Type a message first: an empty message is not sent to any model.",
              "Escreva uma mensagem primeiro: uma mensagem vazia não é enviada a nenhum modelo."),
    "unavailable": ("Unavailable", "Indisponível"),
    "downloading": ("Downloading the model on first use (once)", "Baixando o modelo no primeiro uso (uma vez só)"),
    "truncated": ("The message has {characters:,} characters ({tokens:,} tokens); this model reads {limit} tokens, "
                  "so it answered the first {kept:,} characters.",
                  "A mensagem tem {characters:,} caracteres ({tokens:,} tokens); este modelo lê {limit} tokens, "
                  "então respondeu aos primeiros {kept:,} caracteres."),
    "upload_first": ("Upload a CSV file first.", "Envie um arquivo CSV primeiro."),
    "trainable": ("trainable parameters", "parâmetros treináveis"),
    "latency": ("latency", "latência"),
    "implies": ("implies", "indica"),
    "no_label": ("no label could be read from the reply", "nenhum rótulo pôde ser lido na resposta"),
    "by_scoring": ("by scoring the answers", "pela pontuação das respostas"),
    "arena_help": ("Two variants of the base model, drawn at random and hidden until you vote. Send a message, "
                   "compare the answers, then say which was better.",
                   "Duas variantes do modelo base, sorteadas e ocultas até o seu voto. Envie uma mensagem, "
                   "compare as respostas e diga qual foi melhor."),
    "new_pair": ("New pair", "Novo par"),
    "model_a": ("Model A", "Modelo A"),
    "model_b": ("Model B", "Modelo B"),
    "a_better": ("A is better", "A é melhor"),
    "b_better": ("B is better", "B é melhor"),
    "tie": ("Tie", "Empate"),
    "voted": ("Thank you. A was **{a}**, B was **{b}**.", "Obrigado. A era **{a}**, B era **{b}**."),
    "vote_first": ("Send a message to both models before voting.", "Envie uma mensagem aos dois modelos antes de votar."),
    "ratings": ("Ratings (Bradley-Terry, 95% bootstrap interval), beside the harness's English score (accuracy; "
                "entity F1; SQuAD F1)",
                "Ranking (Bradley-Terry, intervalo bootstrap de 95%), ao lado da pontuação do harness em inglês "
                "(acurácia; F1 de entidades; F1 do SQuAD)"),
    "results_help": ("What `python -m harness run SUITE` wrote. Click a column's header to sort.",
                     "O que `python -m harness run SUITE` escreveu. Clique no cabeçalho de uma coluna para ordenar."),
    "all": ("(all)", "(todos)"),
    "language": ("Language", "Idioma"),
    "suite": ("Suite", "Suíte"),
    "table": ("Results table", "Tabela de resultados"),
    "plot_parameters": ("Score (accuracy, entity F1) against trainable parameters (Pareto front marked)",
                        "Pontuação (acurácia, F1 de entidades) em função dos parâmetros treináveis (fronteira de "
                        "Pareto marcada)"),
    "plot_time": ("Score (accuracy, entity F1) against training time",
                  "Pontuação (acurácia, F1 de entidades) em função do tempo de treino"),
    "plot_languages": ("Score by task and language (the cross-lingual matrix)",
                       "Pontuação por tarefa e idioma (a matriz entre idiomas)"),
    "bias": ("Bias probe: how often a prediction flips when only a person's gender, name or origin changes",
             "Sonda de viés: com que frequência a previsão muda quando só o gênero, o nome ou a origem de uma "
             "pessoa muda"),
    "explorer": ("Items on which the chosen variants disagree", "Itens em que as variantes escolhidas discordam"),
    "variants": ("Variants", "Variantes"),
    "item": ("Item (its prompt, answer and scores per variant)", "Item (prompt, resposta e pontuações por variante)"),
    "no_results": ("No harness results yet: run `python -m harness run ci --limit 50` and press Refresh.",
                   "Ainda não há resultados do harness: rode `python -m harness run ci --limit 50` e clique em "
                   "Atualizar."),
    "run": ("Run", "Execução"),
    "no_runs": ("No runs yet: train one in the Train tab, or run `python -m tljax.train`.",
                "Ainda não há execuções: treine uma na aba Treinar, ou rode `python -m tljax.train`."),
    "curves": ("Learning curves", "Curvas de aprendizagem"),
    "diagnosis": ("Diagnosis", "Diagnóstico"),
    "config": ("Config", "Configuração"),
    "test_metrics": ("Test metrics", "Métricas de teste"),
    "exports": ("Exports", "Exportações"),
    "model": ("Model", "Modelo"),
    "method": ("Method", "Método"),
    "corpus": ("Data: a packaged corpus, or upload a file", "Dados: um corpus empacotado, ou envie um arquivo"),
    "upload": ("A file: CSV / TSV (a text and a label column), for entities CoNLL (a word and its tag per line) "
               "or JSON Lines (texts with entity spans), for questions SQuAD JSON or JSON Lines / CSV (question, "
               "context, answers)",
               "Um arquivo: CSV / TSV (uma coluna de texto e uma de rótulo), para entidades CoNLL (uma palavra e "
               "sua etiqueta por linha) ou JSON Lines (textos com trechos de entidades), para perguntas JSON do "
               "SQuAD ou JSON Lines / CSV (question, context, answers)"),
    "uploaded": ("uploaded file", "arquivo enviado"),
    "text_column": ("Text column", "Coluna de texto"),
    "label_column": ("Label column", "Coluna de rótulo"),
    "labels": ("Labels, or entity types (comma-separated; empty: those found in the file)",
               "Rótulos, ou tipos de entidade (separados por vírgula; vazio: os encontrados no arquivo)"),
    "steps": ("Budget: training steps", "Orçamento: passos de treino"),
    "run_name": ("Run name (its folder under the runs folder)", "Nome da execução (sua pasta na pasta de execuções)"),
    "start": ("Start training", "Iniciar o treino"),
    "stop": ("Stop (saves a checkpoint)", "Parar (salva um checkpoint)"),
    "resume": ("Resume", "Continuar"),
    "progress": ("Progress", "Progresso"),
    "trains": ("What it trains on this model", "O que ele treina neste modelo"),
    "methods_help": ("What each transfer method trains, and why.", "O que cada método de transferência treina, e por quê."),
    "methods_table": ("Trainable parameters of each method on the chosen model",
                      "Parâmetros treináveis de cada método no modelo escolhido"),
    "state_running": ("training", "treinando"),
    "state_finished": ("finished: it is now a variant in the other tabs", "terminou: agora é uma variante nas outras abas"),
    "state_stopped": ("stopped at its last checkpoint; press Resume to continue",
                      "parado no último checkpoint; clique em Continuar para seguir"),
    "state_failed": ("failed", "falhou"),
}

METHOD_EXPLANATIONS: dict[str, tuple[str, str]] = {
    "feature-extraction": ("The backbone is frozen; only a new classification head learns, on the backbone's features. "
                           "Cheapest; good when the pre-trained features already separate the classes.",
                           "O backbone fica congelado; só uma nova cabeça de classificação aprende, sobre as "
                           "representações dele. O mais barato; bom quando as representações já separam as classes."),
    "full": ("Every weight is updated. The strongest with enough data, the most memory, one full copy per task.",
             "Todos os pesos são atualizados. O mais forte com dados suficientes, a maior memória, uma cópia "
             "inteira por tarefa."),
    "partial": ("The embeddings (and optionally the bottom layers) stay frozen; the top layers and the head learn: "
                "lower layers hold general features, upper ones task-specific ones.",
                "As embeddings (e opcionalmente as camadas de baixo) ficam congeladas; as camadas de cima e a cabeça "
                "aprendem: as de baixo guardam traços gerais, as de cima os da tarefa."),
    "gradual-unfreezing": ("Starts with the top layer and unfreezes one more layer downwards at intervals "
                           "(ULMFiT), to avoid forgetting what pre-training learnt.",
                           "Começa pela camada do topo e descongela mais uma camada para baixo a intervalos "
                           "(ULMFiT), para não esquecer o que o pré-treino aprendeu."),
    "bitfit": ("Only the bias terms (and the head) learn: about 0.1% of the weights, often close to full "
               "fine-tuning on small data.",
               "Só os termos de viés (bias) e a cabeça aprendem: cerca de 0,1% dos pesos, muitas vezes perto do "
               "ajuste completo com poucos dados."),
    "lora": ("Low-rank matrices beside the attention projections learn the change of the weights; they merge into "
             "the model afterwards, so inference costs nothing extra.",
             "Matrizes de posto baixo ao lado das projeções de atenção aprendem a mudança dos pesos; depois se "
             "fundem ao modelo, e a inferência não custa nada a mais."),
    "houlsby": ("Small bottleneck layers (adapters) after attention and after the feed-forward block of every layer.",
                "Pequenas camadas de gargalo (adapters) depois da atenção e do bloco feed-forward de cada camada."),
    "pfeiffer": ("One bottleneck adapter per layer, after the feed-forward block: half of Houlsby's parameters.",
                 "Um adapter de gargalo por camada, depois do bloco feed-forward: metade dos parâmetros de Houlsby."),
    "prefix": ("Trained key and value vectors prepended in every layer's attention; the model itself is frozen.",
               "Vetores de chave e valor treinados, colocados à frente na atenção de cada camada; o modelo fica "
               "congelado."),
    "prompt": ("Trained embeddings (a soft prompt) before the input; only they learn.",
               "Embeddings treinadas (um prompt suave) antes da entrada; só elas aprendem."),
    "p-tuning": ("A soft prompt produced by a small encoder (an MLP over trained embeddings), which trains more "
                 "stably than the embeddings alone.",
                 "Um prompt suave produzido por um pequeno codificador (uma MLP sobre embeddings treinadas), que treina "
                 "de forma mais estável do que as embeddings sozinhas."),
}

EXAMPLES = {
    "en": ["A warm, funny and beautifully acted film: I loved every minute.",
           "Two hours of my life I will never get back. Dull, predictable and badly edited.",
           "The soundtrack is great, but the story goes nowhere.",
           "Maria Souza left Petrobras in March 2024 to teach at the Federal University of Pernambuco in Recife."],
    "pt": ["Um filme emocionante e muito bem atuado, adorei cada minuto.",
           "O produto chegou quebrado e o atendimento nunca respondeu. Não recomendo.",
           "A comida estava ótima, mas a espera foi longa demais.",
           "Maria Souza deixou a Petrobras em março de 2024 para lecionar na Universidade Federal de Pernambuco, "
           "em Recife."],
}

# a passage and a question about it, per language (answer tasks)
QA_EXAMPLES = {
    "en": [("The Meeting of Waters is near Manaus, where the dark Rio Negro meets the sandy Solimões. The two rivers "
            "run side by side for about six kilometres without mixing.",
            "How far do the two rivers run side by side?")],
    "pt": [("O Encontro das Águas fica perto de Manaus, onde o escuro rio Negro encontra o barrento Solimões. Os dois "
            "rios correm lado a lado por cerca de seis quilômetros sem se misturar.",
            "Por quantos quilômetros os dois rios correm lado a lado?")],
}


def text(key: str, language: str) -> str:
    """The text of `key` in `language` (en | pt)."""
    english, portuguese = TEXTS[key]
    return portuguese if language == "pt" else english
