//! From a parsed expression ([`crate::expr`]) to a tree of composition operators.
//!
//! - `a AND b AND …` → [`Product`] with each term's weight (1 unless written `w*term`);
//! - `a OR b OR …` → [`Mixture`] with weights π_i ∝ the written weights (1 by default);
//! - `a NOT b` → [`negation`] with weights a, α: both written: as written; neither:
//!   [`DEFAULT_NEGATION`] (1.3, 0.3); only α: a = 1 + α; only a: α = a − 1 (which must then be
//!   positive), so that an omitted weight keeps the total weight 1;
//! - `w*term` alone (outside the above) → a one-term product (a tempered model);
//! - a model name → the leaf the caller's resolver returns for it.
//!
//! # Prompts
//!
//! A prompt `"P"` (or `model:"P"`) is the guidance factor (p_M(x | P) / p_M(x | ""))^γ of its
//! text model M (see [`crate::prompt`] for the formulas), built by [`build_with`]:
//!
//! - A **chain** is a maximal subtree of AND, weights, prompts and NOT whose removed side is
//!   made of prompts only (`"A" NOT "B"`, `ring AND "red" NOT ("green" AND "blue")`). Its
//!   terms are flattened with the products of the weights above them: a prompt term of weight
//!   w gets the coefficient wγ, a term under the removed side of a NOT the coefficient −αwγ,
//!   where the NOT's weights a and α default to 1 (a guidance factor is a ratio at one noise
//!   level; the base carries the noise scale). The prompts of each model in the chain form
//!   **one** [`GuidedPrompts`] group with one unconditional base and weight 1 in the product;
//!   the chain's other terms (models, mixtures, negations of densities) keep their weights.
//!   So `"A" AND "B"` is s_u + γ(s_A − s_u) + γ(s_B − s_u), and `ring AND "A"` is the product of
//!   `ring` and the group s_u + γ(s_A − s_u). Prompts of different models in one chain make
//!   one group per model (a product of guided models).
//! - A NOT whose removed side holds anything but prompts (`"A" NOT ring`) is the negation of
//!   densities, with the weight rules above; each side is built on its own.
//! - OR is a mixture whose components are built on their own: `"A" OR "B"` mixes the guided
//!   conditionals p_u (p_A / p_u)^γ and p_u (p_B / p_u)^γ, each with its own base; it needs
//!   energy models ([`Error::NeedsDensity`] otherwise).
//! - A bare prompt belongs to the only text model, `shapes:"red"` to the one named `shapes`;
//!   which models exist is the caller's resolver's business ([`PromptModels::resolve`] is the
//!   usual one).
//!
//! [`GuidedPrompts`]: crate::prompt::GuidedPrompts
//! [`PromptModels::resolve`]: crate::prompt::PromptModels::resolve

use crate::component::Component;
use crate::expr::Expr;
use crate::ops::{DEFAULT_NEGATION, Mixture, Product, negation};
use crate::prompt::{GuidedPrompts, PromptModel};
use crate::{Error, Result};

/// Builds the composition described by `expr`, asking `resolve` for the leaf of each model
/// name (called once per occurrence). The expression may not hold prompts (see
/// [`build_with`]).
///
/// # Errors
///
/// [`Error::Config`] if the expression holds a prompt; whatever `resolve` returns for an
/// unknown name; the operators' errors (for example [`Error::NeedsDensity`] for OR over
/// score models).
pub fn build(
    expr: &Expr,
    resolve: &mut dyn FnMut(&str) -> Result<Box<dyn Component>>,
) -> Result<Box<dyn Component>> {
    if let Some((_, text)) = expr.prompts().first() {
        return Err(Error::Config(format!(
            "`{expr}` holds the prompt \"{text}\", which needs a text-conditioned model and a \
             guidance scale (build it with `build_with`)"
        )));
    }
    build_with(
        expr,
        resolve,
        &mut |_| Err(Error::Config("no text model is given".into())),
        1.0,
    )
}

/// Builds the composition described by `expr` (see the [module documentation](self)), asking
/// `resolve` for the leaf of each model name (once per occurrence) and `resolve_prompt` for the
/// text model of each prompt (its qualifier, `None` for a bare prompt), guided with the scale
/// `guidance` (γ).
///
/// # Errors
///
/// [`Error::Config`] for a guidance scale that is negative or not finite; whatever the
/// resolvers return (an unknown or ambiguous text model, prefixed with the prompt); as
/// [`GuidedPrompts::new`] (a word the tokenizer does not know); the operators' errors (for
/// example [`Error::NeedsDensity`] for OR over score models, [`Error::Shape`] for models of
/// different dimensions or schedules in one product).
pub fn build_with(
    expr: &Expr,
    resolve: &mut dyn FnMut(&str) -> Result<Box<dyn Component>>,
    resolve_prompt: &mut dyn FnMut(Option<&str>) -> Result<PromptModel>,
    guidance: f64,
) -> Result<Box<dyn Component>> {
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(Error::Config(format!(
            "the guidance scale must be finite and non-negative, got {guidance}"
        )));
    }
    Builder {
        resolve,
        resolve_prompt,
        guidance,
    }
    .node(expr)
}

struct Builder<'r> {
    resolve: &'r mut dyn FnMut(&str) -> Result<Box<dyn Component>>,
    resolve_prompt: &'r mut dyn FnMut(Option<&str>) -> Result<PromptModel>,
    guidance: f64,
}

/// A part of a flattened chain: a group of prompts of one model (by its index), or a
/// component with its weight.
enum Part {
    Group(usize),
    Other(f64, Box<dyn Component>),
}

impl Builder<'_> {
    fn node(&mut self, expr: &Expr) -> Result<Box<dyn Component>> {
        let prompts = has_prompts(expr);
        Ok(match expr {
            Expr::Model { name, .. } => (self.resolve)(name)?,
            Expr::Or(terms) => {
                let terms = terms
                    .iter()
                    .map(|t| {
                        let (w, e) = split_weight(t);
                        Ok((w.unwrap_or(1.0), self.node(e)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Box::new(Mixture::new(terms)?)
            }
            Expr::Not(keep, remove) if !is_ratio_chain(remove) => {
                let (wa, a) = split_weight(keep);
                let (wb, b) = split_weight(remove);
                let (wa, wb) = match (wa, wb) {
                    (Some(x), Some(y)) => (x, y),
                    (None, None) => DEFAULT_NEGATION,
                    (None, Some(y)) => (1.0 + y, y),
                    (Some(x), None) => {
                        if x <= 1.0 {
                            return Err(Error::Config(format!(
                                "`{expr}`: with only the first weight given ({x}), the second is \
                                 {x} − 1, which must be positive; write both weights"
                            )));
                        }
                        (x, x - 1.0)
                    }
                };
                Box::new(negation(wa, self.node(a)?, wb, self.node(b)?)?)
            }
            _ if prompts => self.chain(expr)?,
            Expr::Weighted { weight, expr, .. } => {
                Box::new(Product::new(vec![(*weight, self.node(expr)?)])?)
            }
            Expr::And(terms) => {
                let terms = terms
                    .iter()
                    .map(|t| {
                        let (w, e) = split_weight(t);
                        Ok((w.unwrap_or(1.0), self.node(e)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Box::new(Product::new(terms)?)
            }
            // Without prompts a NOT's removed side is not a chain of prompts, and a prompt has
            // prompts: both are handled above.
            Expr::Not(..) | Expr::Prompt { .. } => {
                return Err(Error::Config(format!(
                    "`{expr}` cannot be built (an internal inconsistency)"
                )));
            }
        })
    }

    /// The product of a chain holding prompts (see the [module documentation](self)).
    fn chain(&mut self, expr: &Expr) -> Result<Box<dyn Component>> {
        let mut terms = Vec::new();
        flatten(expr, 1.0, &mut terms);
        let mut groups: Vec<(PromptModel, Vec<(f64, &str)>)> = Vec::new();
        let mut parts = Vec::new();
        for (w, term) in terms {
            match term {
                Expr::Prompt { model, text, .. } => {
                    let m = (self.resolve_prompt)(model.as_deref()).map_err(|e| match e {
                        Error::Config(msg) => {
                            Error::Config(format!("the prompt \"{text}\": {msg}"))
                        }
                        other => other,
                    })?;
                    let c = w * self.guidance;
                    match groups.iter().position(|(g, _)| g.name == m.name) {
                        Some(k) => groups[k].1.push((c, text)),
                        None => {
                            parts.push(Part::Group(groups.len()));
                            groups.push((m, vec![(c, text)]));
                        }
                    }
                }
                other => parts.push(Part::Other(w, self.node(other)?)),
            }
        }
        let mut groups = groups
            .iter()
            .map(|(m, terms)| GuidedPrompts::new(m, terms).map(Some))
            .collect::<Result<Vec<_>>>()?;
        let mut product: Vec<(f64, Box<dyn Component>)> = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Part::Group(k) => {
                    let g = groups.get_mut(k).and_then(Option::take).ok_or_else(|| {
                        Error::Config(format!("`{expr}`: a prompt group is used twice"))
                    })?;
                    product.push((1.0, Box::new(g)));
                }
                Part::Other(w, c) => product.push((w, c)),
            }
        }
        if product.len() == 1
            && product[0].0 == 1.0
            && let Some((_, only)) = product.pop()
        {
            return Ok(only);
        }
        Ok(Box::new(Product::new(product)?))
    }
}

/// Whether `e` holds a prompt.
fn has_prompts(e: &Expr) -> bool {
    match e {
        Expr::Prompt { .. } => true,
        Expr::Model { .. } => false,
        Expr::Weighted { expr, .. } => has_prompts(expr),
        Expr::And(v) | Expr::Or(v) => v.iter().any(has_prompts),
        Expr::Not(a, b) => has_prompts(a) || has_prompts(b),
    }
}

/// Whether `e` is made of prompts only, combined with AND, NOT and weights: a product of
/// guidance factors.
fn is_ratio_chain(e: &Expr) -> bool {
    match e {
        Expr::Prompt { .. } => true,
        Expr::Model { .. } | Expr::Or(_) => false,
        Expr::Weighted { expr, .. } => is_ratio_chain(expr),
        Expr::And(v) => v.iter().all(is_ratio_chain),
        Expr::Not(a, b) => is_ratio_chain(a) && is_ratio_chain(b),
    }
}

/// The terms of the chain `e` with weight `w`, flattened: prompts and the subtrees that are
/// not part of the chain (models, mixtures, negations of densities), with the products of
/// the weights above them (negated under the removed side of a NOT of prompts).
fn flatten<'e>(e: &'e Expr, w: f64, out: &mut Vec<(f64, &'e Expr)>) {
    match e {
        Expr::Weighted { weight, expr, .. } => flatten(expr, w * weight, out),
        Expr::And(v) => v.iter().for_each(|t| flatten(t, w, out)),
        Expr::Not(keep, remove) if is_ratio_chain(remove) => {
            flatten(keep, w, out);
            flatten(remove, -w, out);
        }
        other => out.push((w, other)),
    }
}

/// A term's explicit weight and the expression under it.
fn split_weight(e: &Expr) -> (Option<f64>, &Expr) {
    match e {
        Expr::Weighted { weight, expr, .. } => (Some(*weight), expr),
        other => (None, other),
    }
}
