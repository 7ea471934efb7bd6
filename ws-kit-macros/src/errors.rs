//! Collects errors so a macro reports every mistake at once, each at its own span.

use proc_macro2::TokenStream;
use std::fmt::Display;

#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    pub(crate) fn spanned<T: quote::ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn at<M: Display>(&mut self, span: proc_macro2::Span, message: M) {
        self.errors.push(syn::Error::new(span, message));
    }

    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Reads `rename_all = "<rule>"` inside `#[<attr>(...)]` into `slot`; a second one or an
    /// unknown rule is reported here, at its own span.
    pub(crate) fn rename_all(
        &mut self,
        meta: &syn::meta::ParseNestedMeta<'_>,
        attr: &str,
        slot: &mut Option<(String, proc_macro2::Span)>,
    ) -> syn::Result<()> {
        let lit: syn::LitStr = meta.value()?.parse()?;
        if slot.is_some() {
            self.spanned(
                &meta.path,
                format!("duplicate `rename_all` in `#[{attr}(...)]`"),
            );
        } else if crate::case::rename_field("x", &lit.value()).is_none() {
            self.spanned(
                &lit,
                format!(
                    "unknown `rename_all` rule; expected one of {}",
                    crate::case::RULES
                ),
            );
        } else {
            *slot = Some((lit.value(), lit.span()));
        }
        Ok(())
    }

    /// All collected errors as `compile_error!` invocations.
    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.errors
            .iter()
            .map(syn::Error::to_compile_error)
            .collect()
    }
}

/// The error for a key `#[<attr>(...)]` does not know, naming the keys it does.
pub(crate) fn unknown_key(
    meta: &syn::meta::ParseNestedMeta<'_>,
    attr: &str,
    expected: &str,
) -> syn::Error {
    let key = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    meta.error(format!(
        "unknown `{attr}` attribute key `{key}`; expected {expected}"
    ))
}
