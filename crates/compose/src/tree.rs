//! From a parsed expression ([`crate::expr`]) to a tree of composition operators.
//!
//! - `a AND b AND …` → [`Product`] with each term's weight (1 unless written `w*term`);
//! - `a OR b OR …` → [`Mixture`] with weights π_i ∝ the written weights (1 by default);
//! - `a NOT b` → [`negation`] with weights a, α: both written: as written; neither:
//!   [`DEFAULT_NEGATION`] (1.3, 0.3); only α: a = 1 + α; only a: α = a − 1 (which must then be
//!   positive), so that an omitted weight keeps the total weight 1;
//! - `w*term` alone (outside the above) → a one-term product (a tempered model);
//! - a model name → the leaf the caller's resolver returns for it.

use crate::component::Component;
use crate::expr::Expr;
use crate::ops::{DEFAULT_NEGATION, Mixture, Product, negation};
use crate::{Error, Result};

/// Builds the composition described by `expr`, asking `resolve` for the leaf of each model
/// name (called once per occurrence).
///
/// # Errors
///
/// Whatever `resolve` returns for an unknown name; the operators' errors (for example
/// [`Error::NeedsDensity`] for OR over score models).
pub fn build(
    expr: &Expr,
    resolve: &mut dyn FnMut(&str) -> Result<Box<dyn Component>>,
) -> Result<Box<dyn Component>> {
    Ok(match expr {
        Expr::Model { name, .. } => resolve(name)?,
        Expr::Weighted { weight, expr, .. } => {
            Box::new(Product::new(vec![(*weight, build(expr, resolve)?)])?)
        }
        Expr::And(terms) => {
            let terms = terms
                .iter()
                .map(|t| {
                    let (w, e) = split_weight(t);
                    Ok((w.unwrap_or(1.0), build(e, resolve)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Box::new(Product::new(terms)?)
        }
        Expr::Or(terms) => {
            let terms = terms
                .iter()
                .map(|t| {
                    let (w, e) = split_weight(t);
                    Ok((w.unwrap_or(1.0), build(e, resolve)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Box::new(Mixture::new(terms)?)
        }
        Expr::Not(keep, remove) => {
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
            Box::new(negation(wa, build(a, resolve)?, wb, build(b, resolve)?)?)
        }
    })
}

/// A term's explicit weight and the expression under it.
fn split_weight(e: &Expr) -> (Option<f64>, &Expr) {
    match e {
        Expr::Weighted { weight, expr, .. } => (Some(*weight), expr),
        other => (None, other),
    }
}
