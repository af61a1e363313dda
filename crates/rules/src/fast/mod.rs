//! A direct evaluator for the common subset of rule expressions.
//!
//! cel-rust costs about 1–2 µs per evaluation whatever the expression (context scopes,
//! boxed values, overload lookup), which is most of a rule's cost. Rules are mostly
//! comparisons of a variable with a literal, `is_number`/`double` guards, `&&`/`||`, `in`
//! over a literal list, string tests, a few `file[...]`, `meta.*`, `host.*` lookups and the
//! history functions. This module compiles that subset from the checked CEL AST at load and
//! evaluates it over borrowed inputs without allocating.
//!
//! It never decides anything CEL would not: every operation mirrors cel-rust 0.15 (numeric
//! comparison across int/uint/double, equality that is false across types, checked integer
//! arithmetic, ...). Wherever CEL would report an error, or a case is not covered, the
//! evaluator answers `None` and the caller runs CEL, so errors and their messages always come
//! from CEL. `fast_path_agrees_with_cel` in the tests checks this on random expressions and
//! values.
//!
//! `node` is the tree, `compile` builds it from the AST, `exec` evaluates it.

mod compile;
mod exec;
mod node;

pub(crate) use compile::compile;
pub(crate) use exec::eval_bool;
pub(crate) use node::Node;

#[cfg(test)]
mod tests;
