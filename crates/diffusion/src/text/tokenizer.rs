//! Tokenizers in the Hugging Face `tokenizer.json` format, with a fixed sequence length.
//!
//! A prompt goes through the arrangement of CLIP's tokenizer (Radford et al., *Learning
//! Transferable Visual Models From Natural Language Supervision*, ICML 2021), the one Stable
//! Diffusion conditions on (Rombach et al. 2022): a normalizer (Unicode NFC, runs of whitespace
//! collapsed to one space, lowercase), a pre-tokenizer that splits it into words, a model that
//! maps words to ids (CLIP: byte-pair encoding whose word-final pieces carry the suffix `</w>`),
//! a post-processor that puts `<|startoftext|>` before the prompt and `<|endoftext|>` after it,
//! and padding to a fixed length with a pad token, truncating longer prompts (the end token is
//! kept). The attention mask marks the real tokens (start and end included) with 1 and the
//! padding with 0.
//!
//! [`TextTokenizer::word_level`] builds such a tokenizer over a small vocabulary, one id per
//! word, for prompts such as "red circle AND NOT blue square":
//!
//! ```text
//! normalizer      NFC → Replace(\s+ → " ") → Strip(both sides) → Lowercase
//! pre-tokenizer   Whitespace: \w+ | [^\w\s]+ (words, and runs of punctuation)
//! model           WordLevel: <pad> 0, <unk> 1, <|startoftext|> 2, <|endoftext|> 3, words 4, 5, …
//! post-processor  <|startoftext|> $A <|endoftext|>
//! padding         right, to max_len, with <pad>; truncation to max_len
//! ```
//!
//! Any `tokenizer.json` — one saved here, or a published one such as CLIP's — loads through the
//! one validating constructor [`TextTokenizer::from_tokenizer`]. The sequence length and the pad
//! id come from the file's padding settings (`"padding": {"strategy": {"Fixed": L}, …}`); a file
//! without fixed padding (CLIP's is published with `"padding": null`) is an error that points to
//! [`TextTokenizer::from_file_with_length`], which sets them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, Encoding, Normalizer, OffsetReferential, OffsetType, PaddingDirection,
    PaddingParams, PaddingStrategy, PostProcessor, PreTokenizedString, PreTokenizer, Tokenizer,
    TruncationParams,
};

use crate::{Error, Result};

/// The pad token of word-level tokenizers (id 0).
pub const PAD_TOKEN: &str = "<pad>";
/// The unknown-word token of word-level tokenizers (id 1).
pub const UNK_TOKEN: &str = "<unk>";
/// The start-of-text token, CLIP's name (id 2 in word-level tokenizers).
pub const START_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token, CLIP's name (id 3 in word-level tokenizers).
pub const END_TOKEN: &str = "<|endoftext|>";
/// The shortest sequence of a word-level tokenizer: the start token, one word, the end token.
pub const MIN_WORD_LEVEL_LEN: usize = 3;

/// The ids of the special tokens of word-level tokenizers, in order.
const SPECIALS: [&str; 4] = [PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN];

/// A tokenizer error with `context` in front of the library's message.
fn tok_err<C: std::fmt::Display>(context: C) -> impl FnOnce(tokenizers::Error) -> Error {
    move |e| Error::Tokenizer(format!("{context}: {e}"))
}

/// `source: ` in front of a tokenizer error's message (other errors unchanged).
fn with_source(source: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Tokenizer(msg) => Error::Tokenizer(format!("{source}: {msg}")),
        other => other,
    }
}

/// The token ids and attention mask of a batch of prompts, `[n, L]` each, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    ids: Vec<u32>,
    mask: Vec<u32>,
    batch: usize,
    len: usize,
}

impl Encoded {
    /// `(n, L)`: the number of prompts and the sequence length.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.len)
    }

    /// The token ids, `n · L` of them, prompt after prompt.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The attention mask, `n · L` values: 1 for a real token (start and end included), 0 for
    /// padding.
    pub fn mask(&self) -> &[u32] {
        &self.mask
    }

    /// The ids and mask of prompt `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<(&[u32], &[u32])> {
        if i >= self.batch {
            return None;
        }
        let range = i * self.len..(i + 1) * self.len;
        Some((&self.ids[range.clone()], &self.mask[range]))
    }

    /// The ids as a `u32` tensor `[n, L]` on `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be made on `device`.
    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.ids,
            (self.batch, self.len),
            device,
        )?)
    }

    /// The attention mask as a `u32` tensor `[n, L]` on `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be made on `device`.
    pub fn mask_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.mask,
            (self.batch, self.len),
            device,
        )?)
    }
}

/// A Hugging Face tokenizer with a fixed sequence length: every prompt becomes exactly
/// [`max_len`](Self::max_len) ids, padded with [`pad_id`](Self::pad_id). See the
/// [module documentation](self).
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    unk_id: Option<u32>,
    vocab_size: usize,
}

impl TextTokenizer {
    /// A word-level tokenizer over `words` (ids 4, 5, … in the order given, after the four
    /// special tokens) with sequences of `max_len` tokens, in the arrangement of the
    /// [module documentation](self).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if `max_len` is below [`MIN_WORD_LEVEL_LEN`], the vocabulary is
    /// empty, a word appears twice or is a special token's name, or a word could never be
    /// matched (prompts are lowercased and split at whitespace and punctuation, so "Red",
    /// "red circle" and "red," cannot be words).
    pub fn word_level<I, S>(words: I, max_len: usize) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if max_len < MIN_WORD_LEVEL_LEN {
            return Err(Error::Tokenizer(format!(
                "max_len = {max_len} leaves no room for a word: a sequence holds the start \
                 token, at least one word and the end token ({MIN_WORD_LEVEL_LEN} or more)"
            )));
        }
        let words: Vec<String> = words.into_iter().map(|w| w.as_ref().to_string()).collect();
        if words.is_empty() {
            return Err(Error::Tokenizer(
                "the vocabulary is empty: give at least one word".to_string(),
            ));
        }
        let mut vocab: Vec<(String, u32)> = Vec::with_capacity(SPECIALS.len() + words.len());
        for (id, token) in (0u32..).zip(SPECIALS) {
            vocab.push((token.to_string(), id));
        }
        let mut seen = BTreeSet::new();
        for word in &words {
            if SPECIALS.contains(&word.as_str()) {
                return Err(Error::Tokenizer(format!(
                    "vocabulary word {word:?} is the name of a special token"
                )));
            }
            if !seen.insert(word.as_str()) {
                return Err(Error::Tokenizer(format!(
                    "duplicate word {word:?} in the vocabulary"
                )));
            }
            let id = u32::try_from(vocab.len()).map_err(|_| {
                Error::Tokenizer("the vocabulary holds more than 2³² words".to_string())
            })?;
            vocab.push((word.clone(), id));
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(UNK_TOKEN.to_string())
            .build()
            .map_err(tok_err("word-level model"))?;
        let mut tokenizer = Tokenizer::new(model);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
            .map_err(tok_err("normalizer"))?;
        let normalizer = Sequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Strip::new(true, true).into(),
            Lowercase.into(),
        ]);
        tokenizer
            .with_normalizer(Some(normalizer))
            .map_err(tok_err("normalizer"))?;
        tokenizer.with_pre_tokenizer(Some(Whitespace));
        for word in &words {
            let read = pieces(&tokenizer, word)?;
            if read.len() != 1 || read[0] != *word {
                return Err(Error::Tokenizer(format!(
                    "vocabulary word {word:?} can never be matched: prompts are lowercased and \
                     split at whitespace and punctuation, which reads it as {read:?}"
                )));
            }
        }
        let template = TemplateProcessing::builder()
            .try_single(format!("{START_TOKEN} $A {END_TOKEN}"))
            .map_err(|e| Error::Tokenizer(format!("post-processor: {e}")))?
            .special_tokens(vec![(START_TOKEN, 2), (END_TOKEN, 3)])
            .build()
            .map_err(|e| Error::Tokenizer(format!("post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(template));
        tokenizer
            .add_special_tokens(SPECIALS.map(|t| AddedToken::from(t, true)))
            .map_err(tok_err("special tokens"))?;
        set_length(&mut tokenizer, max_len, PAD_TOKEN)?;
        Self::from_tokenizer(tokenizer)
    }

    /// Wraps a Hugging Face tokenizer, checking that it gives every prompt the same length: the
    /// length `L` and the pad id are those of its fixed padding; without truncation settings,
    /// prompts longer than `L` are truncated to it. Every loader ends here.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the padding is missing or not to a fixed length `L > 0` (set it
    /// with [`with_length`](Self::with_length)), pads to a multiple that `L` is not, names a pad
    /// token that is not in the vocabulary or has another id; if the post-processor leaves no
    /// room for a word in `L`; if the truncation is longer than `L` or its stride too large;
    /// if the vocabulary is empty, or the empty prompt does not encode to `L` ids within it.
    pub fn from_tokenizer(mut tokenizer: Tokenizer) -> Result<Self> {
        let Some(max_id) = tokenizer.get_vocab(true).values().copied().max() else {
            return Err(Error::Tokenizer("the vocabulary is empty".to_string()));
        };
        let vocab_size = max_id as usize + 1;
        let padding = tokenizer.get_padding().ok_or_else(no_length)?;
        let max_len = match padding.strategy {
            PaddingStrategy::Fixed(0) => {
                return Err(Error::Tokenizer(
                    "the padding length is 0: sequences must hold at least one token".to_string(),
                ));
            }
            PaddingStrategy::Fixed(len) => len,
            PaddingStrategy::BatchLongest => return Err(no_length()),
        };
        if let Some(multiple) = padding.pad_to_multiple_of
            && multiple > 0
            && !max_len.is_multiple_of(multiple)
        {
            return Err(Error::Tokenizer(format!(
                "the padding length {max_len} is not a multiple of pad_to_multiple_of = \
                 {multiple}: sequences would come out longer"
            )));
        }
        let pad_id = padding.pad_id;
        match tokenizer.token_to_id(&padding.pad_token) {
            Some(id) if id == pad_id => {}
            Some(id) => {
                return Err(Error::Tokenizer(format!(
                    "the pad token {:?} has id {id}, but the padding settings give pad_id = \
                     {pad_id}",
                    padding.pad_token
                )));
            }
            None => {
                return Err(Error::Tokenizer(format!(
                    "the pad token {:?} is not in the vocabulary",
                    padding.pad_token
                )));
            }
        }
        let added = added_tokens(&tokenizer);
        if max_len <= added {
            return Err(Error::Tokenizer(format!(
                "the sequence length {max_len} leaves no room for a word: the post-processor \
                 adds {added} tokens"
            )));
        }
        match tokenizer.get_truncation() {
            None => {
                tokenizer
                    .with_truncation(Some(TruncationParams {
                        max_length: max_len,
                        ..TruncationParams::default()
                    }))
                    .map_err(tok_err("truncation"))?;
            }
            Some(t) if t.max_length > max_len => {
                return Err(Error::Tokenizer(format!(
                    "the truncation length {} exceeds the padding length {max_len}: long prompts \
                     would come out longer than the others",
                    t.max_length
                )));
            }
            Some(t) if t.max_length <= added => {
                return Err(Error::Tokenizer(format!(
                    "the truncation length {} leaves no room for a word: the post-processor adds \
                     {added} tokens",
                    t.max_length
                )));
            }
            Some(t) if t.stride >= t.max_length - added => {
                return Err(Error::Tokenizer(format!(
                    "the truncation stride {} is not below the {} tokens left for words",
                    t.stride,
                    t.max_length - added
                )));
            }
            Some(_) => {}
        }
        let unk_id = unknown_id(&tokenizer)?;
        let out = Self {
            inner: tokenizer,
            max_len,
            pad_id,
            unk_id,
            vocab_size,
        };
        // The special tokens the post-processor adds must be ids of the vocabulary, and the
        // settings must give the fixed length: the empty prompt checks both.
        out.encode(&[""])
            .map_err(with_source("encoding the empty prompt"))?;
        Ok(out)
    }

    /// Loads a `tokenizer.json` from `bytes` (see [`from_tokenizer`](Self::from_tokenizer)).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the bytes are not a valid `tokenizer.json` or the tokenizer has
    /// no fixed length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_tokenizer(parse(bytes, "tokenizer.json")?)
    }

    /// Loads the `tokenizer.json` at `path` (see [`from_tokenizer`](Self::from_tokenizer)).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read; [`Error::Tokenizer`] naming the file if it is
    /// not a valid `tokenizer.json` or the tokenizer has no fixed length.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let tokenizer = parse(&read(path)?, &source)?;
        Self::from_tokenizer(tokenizer).map_err(with_source(&source))
    }

    /// Loads a `tokenizer.json` from `bytes` with the sequence length and pad token given here
    /// instead of the file's (see [`with_length`](Self::with_length)).
    ///
    /// # Errors
    ///
    /// As [`from_bytes`](Self::from_bytes) and [`with_length`](Self::with_length).
    pub fn from_bytes_with_length(bytes: &[u8], max_len: usize, pad_token: &str) -> Result<Self> {
        let mut tokenizer = parse(bytes, "tokenizer.json")?;
        set_length(&mut tokenizer, max_len, pad_token)?;
        Self::from_tokenizer(tokenizer)
    }

    /// Loads the `tokenizer.json` at `path` with the sequence length and pad token given here
    /// instead of the file's; for published tokenizers without padding settings, e.g. CLIP's:
    /// `from_file_with_length(path, 77, "<|endoftext|>")`.
    ///
    /// # Errors
    ///
    /// As [`from_file`](Self::from_file) and [`with_length`](Self::with_length).
    pub fn from_file_with_length(path: &Path, max_len: usize, pad_token: &str) -> Result<Self> {
        let source = path.display().to_string();
        let mut tokenizer = parse(&read(path)?, &source)?;
        set_length(&mut tokenizer, max_len, pad_token)
            .and_then(|()| Self::from_tokenizer(tokenizer))
            .map_err(with_source(&source))
    }

    /// The same tokenizer with sequences of `max_len` tokens padded with `pad_token`: fixed
    /// padding (on the side the tokenizer pads, right by default) and truncation to `max_len`
    /// (on its side and strategy, stride 0).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if `pad_token` is not in the vocabulary or `max_len` leaves no room
    /// for a word after the tokens the post-processor adds.
    pub fn with_length(self, max_len: usize, pad_token: &str) -> Result<Self> {
        let mut tokenizer = self.inner;
        set_length(&mut tokenizer, max_len, pad_token)?;
        Self::from_tokenizer(tokenizer)
    }

    /// The tokenizer as `tokenizer.json` text (pretty-printed).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if it cannot be serialized.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(tok_err("serializing"))
    }

    /// Writes the tokenizer to `path` as `tokenizer.json`, atomically: a temporary file in the
    /// same directory, synced, then renamed over `path` ([`crate::train::write_atomic`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be written; [`Error::Tokenizer`] if the tokenizer
    /// cannot be serialized.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::train::write_atomic(path, self.to_json()?.as_bytes())
    }

    /// Encodes `texts`: `[n, L]` ids and attention mask. Unknown words become the unknown
    /// token and prompts longer than `L` are truncated, silently: use
    /// [`encode_strict`](Self::encode_strict) for prompts a person typed.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the tokenizer fails on a prompt (for example a word-level model
    /// without its unknown token meeting an unknown word).
    pub fn encode(&self, texts: &[&str]) -> Result<Encoded> {
        let encodings = self.encode_raw(texts)?;
        self.collect(&encodings)
    }

    /// Encodes `texts` like [`encode`](Self::encode), but fails on any prompt holding a word
    /// that maps to the unknown token, or too long to fit in `L` tokens.
    ///
    /// A tokenizer without an unknown token (such as a byte-level BPE, which spells every word
    /// from its bytes) never reports unknown words.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] naming each such prompt and its unknown words (as written in the
    /// prompt), or saying that it would be truncated.
    pub fn encode_strict(&self, texts: &[&str]) -> Result<Encoded> {
        let encodings = self.encode_raw(texts)?;
        let mut problems = Vec::new();
        for (i, (text, encoding)) in texts.iter().zip(&encodings).enumerate() {
            let unknown = self.unknown_words(text, encoding);
            if !unknown.is_empty() {
                let list: Vec<String> = unknown.iter().map(|w| format!("{w:?}")).collect();
                problems.push(format!(
                    "prompt {i} ({text:?}): unknown word{} {}",
                    if unknown.len() == 1 { "" } else { "s" },
                    list.join(", ")
                ));
            }
            if !encoding.get_overflowing().is_empty() {
                problems.push(format!(
                    "prompt {i} ({text:?}) does not fit in {} tokens and would be truncated",
                    self.max_len
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Tokenizer(problems.join("; ")));
        }
        self.collect(&encodings)
    }

    /// The number of embedding rows a model needs: one more than the largest id, added tokens
    /// included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The sequence length `L` of every encoding.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id of the pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of the unknown token, if the model has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The id of `token` (a vocabulary entry such as `"red"` or `"low</w>"`, not a prompt).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token with id `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The Hugging Face tokenizer inside.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The library's encodings of `texts`, with the special tokens.
    fn encode_raw(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.inner
            .encode_batch(texts.to_vec(), true)
            .map_err(tok_err("encoding"))
    }

    /// The words of `text` (as written in it) that hold a token mapped to the unknown id.
    fn unknown_words(&self, text: &str, encoding: &Encoding) -> Vec<String> {
        let Some(unk) = self.unk_id else {
            return Vec::new();
        };
        let (ids, special) = (encoding.get_ids(), encoding.get_special_tokens_mask());
        let (words, offsets) = (encoding.get_word_ids(), encoding.get_offsets());
        // The span of each word, over all its (non-special) tokens.
        let mut spans: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for p in 0..ids.len() {
            if let (Some(Some(w)), Some(&(a, b)), Some(0)) =
                (words.get(p), offsets.get(p), special.get(p))
            {
                let span = spans.entry(*w).or_insert((a, b));
                *span = (span.0.min(a), span.1.max(b));
            }
        }
        let mut out: Vec<String> = Vec::new();
        for (p, &id) in ids.iter().enumerate() {
            if id != unk || special.get(p) != Some(&0) {
                continue;
            }
            let own = offsets.get(p).copied().unwrap_or_default();
            let (a, b) = match words.get(p).copied().flatten() {
                Some(w) => spans.get(&w).copied().unwrap_or(own),
                None => own,
            };
            let word = match text.get(a..b) {
                Some(w) if !w.is_empty() => w.to_string(),
                _ => encoding.get_tokens().get(p).cloned().unwrap_or_default(),
            };
            if !out.contains(&word) {
                out.push(word);
            }
        }
        out
    }

    /// The `[n, L]` ids and mask of `encodings`, each checked to be `L` ids within the
    /// vocabulary.
    fn collect(&self, encodings: &[Encoding]) -> Result<Encoded> {
        let (n, len) = (encodings.len(), self.max_len);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for (i, e) in encodings.iter().enumerate() {
            if e.len() != len {
                return Err(Error::Tokenizer(format!(
                    "prompt {i} encodes to {} tokens, not the sequence length {len}",
                    e.len()
                )));
            }
            if let Some(&bad) = e
                .get_ids()
                .iter()
                .find(|&&id| id as usize >= self.vocab_size)
            {
                return Err(Error::Tokenizer(format!(
                    "prompt {i} encodes to id {bad}, outside the vocabulary of {} ids",
                    self.vocab_size
                )));
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| u32::from(m != 0)));
        }
        Ok(Encoded {
            ids,
            mask,
            batch: n,
            len,
        })
    }
}

/// The error of a tokenizer without a fixed sequence length.
fn no_length() -> Error {
    Error::Tokenizer(
        "the tokenizer has no fixed sequence length: its padding settings must be \
         {\"strategy\": {\"Fixed\": L}, …}; load it with `TextTokenizer::from_file_with_length` \
         (or call `with_length`) to give the length and the pad token"
            .to_string(),
    )
}

/// The bytes of the file at `path`.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A Hugging Face tokenizer from `tokenizer.json` bytes; `source` names them in errors.
fn parse(bytes: &[u8], source: &str) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::Tokenizer(format!("{source}: not a valid tokenizer.json: {e}")))
}

/// The number of tokens the post-processor adds to a single prompt.
fn added_tokens(tokenizer: &Tokenizer) -> usize {
    tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false))
}

/// Sets fixed padding to `max_len` with `pad_token` and truncation to `max_len`, keeping the
/// tokenizer's padding side and truncation side and strategy.
fn set_length(tokenizer: &mut Tokenizer, max_len: usize, pad_token: &str) -> Result<()> {
    let pad_id = tokenizer.token_to_id(pad_token).ok_or_else(|| {
        Error::Tokenizer(format!(
            "the pad token {pad_token:?} is not in the vocabulary"
        ))
    })?;
    let added = added_tokens(tokenizer);
    if max_len <= added {
        return Err(Error::Tokenizer(format!(
            "max_len = {max_len} leaves no room for a word: the post-processor adds {added} tokens"
        )));
    }
    let direction = tokenizer
        .get_padding()
        .map_or(PaddingDirection::Right, |p| p.direction);
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_len),
        direction,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token: pad_token.to_string(),
    }));
    let truncation = TruncationParams {
        max_length: max_len,
        stride: 0,
        ..tokenizer.get_truncation().cloned().unwrap_or_default()
    };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(tok_err("truncation"))?;
    Ok(())
}

/// The id of the model's unknown token: its `unk_token` (WordLevel, BPE, WordPiece) or
/// `unk_id` (Unigram), if any and in the vocabulary.
fn unknown_id(tokenizer: &Tokenizer) -> Result<Option<u32>> {
    let model = serde_json::to_value(tokenizer.get_model())
        .map_err(|e| Error::Tokenizer(format!("reading the model's unknown token: {e}")))?;
    if let Some(token) = model.get("unk_token").and_then(|v| v.as_str()) {
        return Ok(tokenizer.token_to_id(token));
    }
    Ok(model
        .get("unk_id")
        .and_then(|v| v.as_u64())
        .and_then(|id| u32::try_from(id).ok()))
}

/// The pieces the normalizer and pre-tokenizer of `tokenizer` cut `text` into (before the
/// model).
fn pieces(tokenizer: &Tokenizer, text: &str) -> Result<Vec<String>> {
    let mut pre = PreTokenizedString::from(text);
    if let Some(n) = tokenizer.get_normalizer() {
        pre.normalize(|s| n.normalize(s))
            .map_err(tok_err("normalizer"))?;
    }
    if let Some(p) = tokenizer.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre).map_err(tok_err("pre-tokenizer"))?;
    }
    Ok(pre
        .get_splits(OffsetReferential::Normalized, OffsetType::None)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Result<Self> {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "recompose-tokenizer-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            Ok(Self(dir))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const WORDS: [&str; 6] = ["red", "blue", "circle", "square", "and", "not"];

    fn shapes(max_len: usize) -> Result<TextTokenizer> {
        TextTokenizer::word_level(WORDS, max_len)
    }

    fn id(t: &TextTokenizer, token: &str) -> u32 {
        t.token_to_id(token).unwrap_or(u32::MAX)
    }

    fn tokenizer_error(r: Result<TextTokenizer>) -> String {
        match r {
            Err(e @ Error::Tokenizer(_)) => {
                assert!(e.is_bad_input());
                e.to_string()
            }
            other => panic!("expected a tokenizer error, got {other:?}"),
        }
    }

    #[test]
    fn special_tokens_and_padding_sit_where_they_belong() -> Result<()> {
        let t = shapes(6)?;
        assert_eq!((t.max_len(), t.pad_id(), t.unk_id()), (6, 0, Some(1)));
        assert_eq!(t.vocab_size(), 4 + WORDS.len());
        for (i, token) in SPECIALS.iter().enumerate() {
            assert_eq!(t.token_to_id(token), Some(i as u32));
            assert_eq!(t.id_to_token(i as u32).as_deref(), Some(*token));
        }
        assert_eq!(t.token_to_id("red"), Some(4));
        assert_eq!(t.id_to_token(9).as_deref(), Some("not"));
        assert_eq!(t.id_to_token(10), None);
        let e = t.encode(&["red circle", "not blue square", ""])?;
        assert_eq!(e.shape(), (3, 6));
        let (red, circle) = (id(&t, "red"), id(&t, "circle"));
        let (not, blue, square) = (id(&t, "not"), id(&t, "blue"), id(&t, "square"));
        assert_eq!(
            e.row(0),
            Some((&[2, red, circle, 3, 0, 0][..], &[1, 1, 1, 1, 0, 0][..]))
        );
        assert_eq!(
            e.row(1),
            Some((&[2, not, blue, square, 3, 0][..], &[1, 1, 1, 1, 1, 0][..]))
        );
        assert_eq!(
            e.row(2),
            Some((&[2, 3, 0, 0, 0, 0][..], &[1, 1, 0, 0, 0, 0][..]))
        );
        assert_eq!(e.row(3), None);
        let ids = e.ids_tensor(&Device::Cpu)?;
        assert_eq!(
            (ids.dims(), ids.dtype()),
            (&[3usize, 6][..], candle_core::DType::U32)
        );
        assert_eq!(ids.to_vec2::<u32>()?[1], e.ids()[6..12]);
        assert_eq!(
            e.mask_tensor(&Device::Cpu)?.to_vec2::<u32>()?[2],
            e.mask()[12..]
        );
        Ok(())
    }

    #[test]
    fn prompts_are_normalized() -> Result<()> {
        let t = shapes(8)?;
        let want = t.encode(&["red circle"])?;
        for variant in [
            "  Red   CIRCLE ",
            "RED\tcircle\n",
            "red\u{00a0}circle",
            "rEd circle",
        ] {
            assert_eq!(t.encode_strict(&[variant])?, want, "{variant:?}");
        }
        assert_ne!(t.encode(&["circle red"])?, want);
        Ok(())
    }

    #[test]
    fn long_prompts_are_truncated_keeping_the_end_token() -> Result<()> {
        let t = shapes(4)?;
        let e = t.encode(&["red circle and blue square"])?;
        let (red, circle) = (id(&t, "red"), id(&t, "circle"));
        assert_eq!(
            e.row(0),
            Some((&[2, red, circle, 3][..], &[1, 1, 1, 1][..]))
        );
        // Exactly full fits; one word more does not, in strict mode.
        t.encode_strict(&["red circle"])?;
        let err = t
            .encode_strict(&["red circle", "red circle and"])
            .unwrap_err();
        assert!(err.is_bad_input());
        let msg = err.to_string();
        assert!(
            msg.contains("prompt 1") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(!msg.contains("prompt 0"), "{msg}");
        Ok(())
    }

    #[test]
    fn unknown_words_are_named() -> Result<()> {
        let t = shapes(8)?;
        // The lenient encoding maps them to <unk>.
        let e = t.encode(&["red circel"])?;
        assert_eq!(e.row(0).map(|r| r.0[2]), Some(1));
        let err = t
            .encode_strict(&["red circle", "Red Circel AND bleu square", "blue"])
            .unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)) && err.is_bad_input());
        let msg = err.to_string();
        assert!(
            msg.contains("\"Circel\"") && msg.contains("\"bleu\""),
            "{msg}"
        );
        assert!(
            msg.contains("prompt 1") && !msg.contains("prompt 0"),
            "{msg}"
        );
        // Punctuation is split off and unknown too.
        let msg = t.encode_strict(&["red, circle"]).unwrap_err().to_string();
        assert!(msg.contains("\",\""), "{msg}");
        Ok(())
    }

    #[test]
    fn save_then_load_gives_the_same_encodings() -> Result<()> {
        let dir = TempDir::new("roundtrip")?;
        let path = dir.0.join("tokenizer.json");
        let t = shapes(7)?;
        t.save(&path)?;
        // Atomic: nothing but the file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .map_err(|source| Error::Io {
                path: dir.0.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.json")]);
        let back = TextTokenizer::from_file(&path)?;
        let prompts = [
            "red circle",
            "  NOT blue square ",
            "red and not",
            "squre",
            "",
        ];
        assert_eq!(back.encode(&prompts)?, t.encode(&prompts)?);
        assert_eq!(
            (
                back.max_len(),
                back.pad_id(),
                back.unk_id(),
                back.vocab_size()
            ),
            (t.max_len(), t.pad_id(), t.unk_id(), t.vocab_size())
        );
        assert_eq!(back.to_json()?, t.to_json()?);
        let json: serde_json::Value =
            serde_json::from_str(&t.to_json()?).map_err(|e| Error::Tokenizer(e.to_string()))?;
        assert_eq!(json["model"]["type"], "WordLevel");
        assert_eq!(json["padding"]["strategy"]["Fixed"], 7);
        // Saving over an existing file replaces it.
        shapes(5)?.save(&path)?;
        assert_eq!(TextTokenizer::from_file(&path)?.max_len(), 5);
        Ok(())
    }

    #[test]
    fn invalid_vocabularies_and_lengths_are_errors() {
        for len in [0, 1, 2] {
            let msg = tokenizer_error(shapes(len));
            assert!(msg.contains("max_len"), "{msg}");
        }
        let empty: [&str; 0] = [];
        assert!(tokenizer_error(TextTokenizer::word_level(empty, 5)).contains("empty"));
        let msg = tokenizer_error(TextTokenizer::word_level(["red", "blue", "red"], 5));
        assert!(
            msg.contains("duplicate") && msg.contains("\"red\""),
            "{msg}"
        );
        for bad in [
            "Red",
            "red circle",
            "red,",
            "",
            " red",
            "<pad>",
            "<|endoftext|>",
        ] {
            let msg = tokenizer_error(TextTokenizer::word_level(["blue", bad], 5));
            assert!(msg.contains(&format!("{bad:?}")), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn malformed_files_are_errors() -> Result<()> {
        let dir = TempDir::new("malformed")?;
        let good = shapes(6)?.to_json()?;
        let half = &good[..good.len() / 2];
        let edit = |f: &dyn Fn(&mut serde_json::Value)| -> String {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap_or_default();
            f(&mut v);
            v.to_string()
        };
        let cases = [
            ("not json", "{ this is not json".to_string(), "not a valid"),
            ("truncated", half.to_string(), "not a valid"),
            (
                "not a tokenizer",
                r#"{"model": 3}"#.to_string(),
                "not a valid",
            ),
            ("empty", String::new(), "not a valid"),
            (
                "no padding",
                edit(&|v| v["padding"] = serde_json::Value::Null),
                "no fixed sequence length",
            ),
            (
                "batch-longest padding",
                edit(&|v| v["padding"]["strategy"] = "BatchLongest".into()),
                "no fixed sequence length",
            ),
            (
                "zero length",
                edit(&|v| v["padding"]["strategy"]["Fixed"] = 0.into()),
                "length is 0",
            ),
            (
                "length 2",
                edit(&|v| v["padding"]["strategy"]["Fixed"] = 2.into()),
                "no room",
            ),
            (
                "pad token absent",
                edit(&|v| v["padding"]["pad_token"] = "<nothing>".into()),
                "\"<nothing>\" is not in the vocabulary",
            ),
            (
                "pad id mismatch",
                edit(&|v| v["padding"]["pad_id"] = 4.into()),
                "pad_id = 4",
            ),
            (
                "multiple",
                edit(&|v| v["padding"]["pad_to_multiple_of"] = 4.into()),
                "pad_to_multiple_of",
            ),
            (
                "truncation too long",
                edit(&|v| v["truncation"]["max_length"] = 9.into()),
                "exceeds the padding length",
            ),
            (
                "truncation too short",
                edit(&|v| v["truncation"]["max_length"] = 1.into()),
                "truncation length 1 leaves no room",
            ),
            (
                "stride",
                edit(&|v| v["truncation"]["stride"] = 4.into()),
                "stride 4",
            ),
            (
                "empty vocabulary",
                edit(&|v| {
                    v["model"]["vocab"] = serde_json::json!({});
                    v["added_tokens"] = serde_json::json!([]);
                }),
                "vocabulary is empty",
            ),
            (
                "special id outside the vocabulary",
                edit(&|v| {
                    v["post_processor"]["special_tokens"]["<|endoftext|>"]["ids"] =
                        serde_json::json!([99])
                }),
                "outside the vocabulary",
            ),
        ];
        for (what, text, expected) in cases {
            let err = match TextTokenizer::from_bytes(text.as_bytes()) {
                Err(e) => e,
                Ok(_) => panic!("{what}: loaded"),
            };
            assert!(matches!(err, Error::Tokenizer(_)), "{what}: {err}");
            assert!(err.to_string().contains(expected), "{what}: {err}");
            assert!(err.is_bad_input(), "{what}");
            // Through a file, the message names it.
            let path = dir.0.join("tokenizer.json");
            std::fs::write(&path, &text).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let msg = match TextTokenizer::from_file(&path) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{what}: loaded from a file"),
            };
            assert!(msg.contains("tokenizer.json"), "{what}: {msg}");
        }
        let msg = tokenizer_error(TextTokenizer::from_bytes(
            edit(&|v| v["padding"] = serde_json::Value::Null).as_bytes(),
        ));
        assert!(msg.contains("from_file_with_length"), "{msg}");
        let missing = TextTokenizer::from_file(&dir.0.join("absent.json")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }) && missing.is_bad_input());
        // The length can be given instead; then it loads.
        let fixed = TextTokenizer::from_bytes_with_length(
            edit(&|v| v["padding"] = serde_json::Value::Null).as_bytes(),
            6,
            PAD_TOKEN,
        )?;
        assert_eq!(fixed.encode(&["red"])?, shapes(6)?.encode(&["red"])?);
        Ok(())
    }

    /// A byte-pair-encoding `tokenizer.json` in the arrangement of CLIP's (NFC, whitespace
    /// collapse and lowercase; CLIP's split pattern then byte-level mapping; BPE with the
    /// word-final suffix `</w>` and `<|endoftext|>` as the unknown token; start and end tokens
    /// added by a RoBERTa post-processor) over a tiny vocabulary, with `padding` as given.
    fn clip_like(padding: serde_json::Value) -> String {
        let vocab = [
            "d",
            "e",
            "i",
            "l",
            "n",
            "o",
            "r",
            "s",
            "t",
            "w",
            "d</w>",
            "e</w>",
            "r</w>",
            "s</w>",
            "t</w>",
            "w</w>",
            "lo",
            "low",
            "er</w>",
            "lower</w>",
            "st</w>",
            "est</w>",
            "low</w>",
            "ne",
            "<|startoftext|>",
            "<|endoftext|>",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
            .collect();
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        };
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": padding,
            "added_tokens": [special(24, "<|startoftext|>"), special(25, "<|endoftext|>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex":
                    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 25],
                "cls": ["<|startoftext|>", 24], "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "BPEDecoder", "suffix": "</w>"},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
                "merges": ["l o", "lo w", "e r</w>", "low er</w>", "s t</w>", "e st</w>",
                    "lo w</w>", "n e"]}
        })
        .to_string()
    }

    /// CLIP's arrangement loads through `from_file` and encodes words to the pieces the merges
    /// give by hand (lowest rank first):
    /// - lower:  l o w e r</w> → lo w e r</w> → low e r</w> → low er</w> → lower</w>
    /// - lowest: l o w e s t</w> → lo w … → low e s t</w> → low e st</w> → low est</w>
    /// - slow:   s l o w</w> → s lo w</w> → s low</w>   (word-final "low</w>", not "low")
    /// - newest: n e w e s t</w> → n e w e st</w> → n e w est</w> → ne w est</w>
    #[test]
    fn a_clip_style_bpe_tokenizer_loads_and_merges_by_rank() -> Result<()> {
        let dir = TempDir::new("bpe")?;
        let path = dir.0.join("tokenizer.json");
        let padding = serde_json::json!({"strategy": {"Fixed": 8}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 25, "pad_type_id": 0,
            "pad_token": "<|endoftext|>"});
        std::fs::write(&path, clip_like(padding)).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let t = TextTokenizer::from_file(&path)?;
        assert_eq!(
            (t.max_len(), t.pad_id(), t.unk_id(), t.vocab_size()),
            (8, 25, Some(25), 26)
        );
        let e = t.encode_strict(&["Lower  lowest slow", "NEWEST"])?;
        let tokens: Vec<Vec<String>> = (0..2)
            .map(|i| {
                e.row(i)
                    .map(|(ids, _)| ids.iter().filter_map(|&id| t.id_to_token(id)).collect())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            tokens[0],
            [
                "<|startoftext|>",
                "lower</w>",
                "low",
                "est</w>",
                "s",
                "low</w>",
                "<|endoftext|>",
                "<|endoftext|>"
            ]
        );
        assert_eq!(
            e.row(0).map(|r| r.1.to_vec()),
            Some(vec![1, 1, 1, 1, 1, 1, 1, 0])
        );
        assert_eq!(
            &tokens[1][..5],
            ["<|startoftext|>", "ne", "w", "est</w>", "<|endoftext|>"]
        );
        assert_eq!(
            e.row(1).map(|r| r.1.to_vec()),
            Some(vec![1, 1, 1, 1, 1, 0, 0, 0])
        );
        assert_eq!(e.row(0).map(|r| r.0[1]), Some(19));
        // A letter outside the vocabulary maps to the unknown token; strict names its word.
        let msg = t.encode_strict(&["slow lox"]).unwrap_err().to_string();
        assert!(
            msg.contains("\"lox\"") && !msg.contains("\"slow\""),
            "{msg}"
        );
        // Published without padding, as CLIP's is: an error until the length is given.
        let bare = clip_like(serde_json::Value::Null);
        let msg = tokenizer_error(TextTokenizer::from_bytes(bare.as_bytes()));
        assert!(msg.contains("fixed sequence length"), "{msg}");
        std::fs::write(&path, &bare).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let given = TextTokenizer::from_file_with_length(&path, 8, END_TOKEN)?;
        assert_eq!(given.encode(&["Lower  lowest slow", "NEWEST"])?, e);
        // Saved and loaded back through the same code.
        let saved = dir.0.join("saved.json");
        given.save(&saved)?;
        assert_eq!(
            TextTokenizer::from_file(&saved)?.encode(&["newest slow"])?,
            given.encode(&["newest slow"])?
        );
        Ok(())
    }
}
