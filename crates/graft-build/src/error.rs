//! How a build ends when it does not produce a module: refused (the patch
//! cannot be made into a safe live patch, with the rule broken) or failed
//! (bad input or environment, with its cause).

use serde::Serialize;

/// How the failures a caller may sort by cause begin (the corpus does):
/// the patched source does not compile…
pub const DOES_NOT_COMPILE: &str = "the patch does not compile: ";
/// …a patched file kbuild does not build for the target (`<file> …`)…
pub const NOT_IN_BUILD: &str = " is not part of this kernel's build";
/// …or the patch changes no code.
pub const NO_CODE_CHANGE: &str = "the patch changes no function of the running kernel";

/// One reason the patch cannot become a safe live patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The rule broken, as the message names it (`init-code`, `data-changed`…).
    pub rule: String,
    /// The whole explanation: object, symbol, rule and what to do instead.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The patch cannot be made into a safe live patch.
    #[error("{}", .0.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<Refusal>),
    /// Bad input or environment; the chain names the cause and the fix.
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl BuildError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, BuildError::Refused(_))
    }
}

/// The rule named in a message (`[rule: x]`), or `what` when it names none.
fn rule_of(message: &str, what: &str) -> String {
    message
        .split_once("[rule: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or_else(|| what.to_owned(), |(r, _)| r.to_owned())
}

impl From<graft_diff::DiffError> for BuildError {
    fn from(e: graft_diff::DiffError) -> Self {
        let graft_diff::DiffError::Refused { refusals } = e;
        BuildError::Refused(
            refusals
                .iter()
                .map(|r| {
                    let message = r.to_string();
                    Refusal {
                        rule: rule_of(&message, "refused"),
                        message,
                    }
                })
                .collect(),
        )
    }
}

impl From<graft_klp::KlpError> for BuildError {
    fn from(e: graft_klp::KlpError) -> Self {
        use graft_klp::KlpError as K;
        let what = match &e {
            K::Unsupported { .. } => "unsupported",
            K::UnsupportedSpecialSection { .. } => "unknown-section",
            K::Markers { .. } => "marker",
            _ => return BuildError::Failed(e.into()),
        };
        let message = e.to_string();
        BuildError::Refused(vec![Refusal {
            rule: rule_of(&message, what),
            message,
        }])
    }
}

impl From<anyhow::Error> for BuildError {
    fn from(e: anyhow::Error) -> Self {
        BuildError::Failed(e)
    }
}

macro_rules! failed_from {
    ($($t:ty),*) => {$(
        impl From<$t> for BuildError {
            fn from(e: $t) -> Self {
                BuildError::Failed(e.into())
            }
        }
    )*};
}
failed_from!(
    graft_kbuild::KbuildError,
    graft_kbuild::record::RecordError,
    graft_target::TargetError,
    graft_verify::VerifyError,
    graft_elf::ElfError,
    graft_diff::layout::LayoutError,
    graft_target::ImageError,
    graft_target::ModuleError,
    std::io::Error
);
