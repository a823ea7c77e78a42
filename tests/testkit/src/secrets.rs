//! Passwords that test redaction hard, and the check that none of them shows.

/// Passwords holding each character that is special in a URL or in a `REDIS_NODES` list
/// (`,` `@` `:` `/` `%` and a blank), written as they are. Their alphanumeric runs
/// (`Kq7vTr0ub4dor`, `Hx2zHorse`, ...) are distinctive, so any that shows in a message was
/// printed from the password.
pub const AWKWARD_PASSWORDS: &[&str] = &[
    "Kq7vTr0ub4dor,Hx2zHorse",
    "Kq7vCorr@Hx2zEct",
    "Kq7vBat:Hx2zTery",
    "Kq7vSta/Hx2zPle",
    "Kq7vHund%Hx2zPure",
    "Kq7vTwo Hx2zWords",
    "Kq7v,@:/% Hx2z,,Mix",
];

/// Asserts that no alphanumeric run of `password` of 4 characters or more is in `text`.
///
/// # Panics
///
/// Naming the run and showing `text`, when one is there.
pub fn assert_password_hidden(password: &str, text: &str) {
    for part in password
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| part.len() >= 4)
    {
        assert!(
            !text.contains(part),
            "{part:?} of the password shows in:\n{text}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_run_is_caught_and_separators_are_not() {
        assert_password_hidden("Kq7vBat:Hx2zTery", "redis://:***@r1:6379 (Bat)");
        let shown = std::panic::catch_unwind(|| {
            assert_password_hidden("Kq7vBat:Hx2zTery", "url redis://:Kq7vBat@r1");
        });
        assert!(shown.is_err());
    }
}
