//! The start-up every service binary shares: logging, `--help` and `--version`, optional
//! subcommands, configuration from the environment (exit code 2 with the offending variable
//! named), then run and report (exit code 1 with the error).

use std::{future::Future, process::ExitCode};

use crate::config::{ConfigError, Env, Vars};

/// A binary: its name, version, one line on what it does and how it is configured, and what
/// it can do besides serving.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    pub name: &'static str,
    pub version: &'static str,
    pub about: &'static str,
    pub subcommands: &'static [Subcommand],
}

/// A subcommand besides serving, with the flags it takes (`--name`, what it does).
#[derive(Debug, Clone, Copy)]
pub struct Subcommand {
    pub name: &'static str,
    pub about: &'static str,
    pub flags: &'static [(&'static str, &'static str)],
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// No arguments, or `serve`.
    Serve,
    /// A subcommand and the flags given to it.
    Run {
        name: &'static str,
        flags: Vec<&'static str>,
    },
}

impl Binary {
    fn usage(&self) -> String {
        use std::fmt::Write;
        let mut text = format!(
            "{} {}: {}\n\nUsage: {} [serve]",
            self.name, self.version, self.about, self.name
        );
        for sub in self.subcommands {
            let _ = write!(text, "\n       {} {}", self.name, sub.name);
            for (flag, _) in sub.flags {
                let _ = write!(text, " [{flag}]");
            }
        }
        text.push_str("\n\nCommands:\n  serve  serve HTTP (the default)");
        for sub in self.subcommands {
            let _ = write!(text, "\n  {}  {}", sub.name, sub.about);
            for (flag, about) in sub.flags {
                let _ = write!(text, "\n      {flag}  {about}");
            }
        }
        text
    }

    /// Reads the arguments after the program name; `Err` holds what to print and the exit code.
    pub fn parse<'a>(
        &self,
        args: impl IntoIterator<Item = &'a str>,
    ) -> Result<Invocation, (String, u8)> {
        let mut args = args.into_iter();
        let Some(first) = args.next() else {
            return Ok(Invocation::Serve);
        };
        let rest: Vec<&str> = args.collect();
        let refuse = |what: String| Err((format!("{what}\n\n{}", self.usage()), 2));
        match first {
            "-h" | "--help" | "help" => Err((self.usage(), 0)),
            "-V" | "--version" => Err((format!("{} {}", self.name, self.version), 0)),
            "serve" if rest.is_empty() => Ok(Invocation::Serve),
            name => {
                let Some(sub) = self.subcommands.iter().find(|s| s.name == name) else {
                    return refuse(format!("{}: unknown command {name:?}", self.name));
                };
                let mut flags = Vec::new();
                for arg in rest {
                    match sub.flags.iter().find(|(flag, _)| *flag == arg) {
                        Some((flag, _)) => flags.push(*flag),
                        None => {
                            return refuse(format!(
                                "{} {name}: unknown argument {arg:?}",
                                self.name
                            ));
                        }
                    }
                }
                Ok(Invocation::Run {
                    name: sub.name,
                    flags,
                })
            }
        }
    }
}

/// Runs a service binary: `parse` reads its configuration, `run` does what was asked with it.
pub async fn main<C, Fut>(
    binary: Binary,
    parse: impl FnOnce(&Vars<Env>) -> Result<C, ConfigError>,
    run: impl FnOnce(Invocation, C) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match binary.parse(args.iter().map(String::as_str)) {
        Ok(invocation) => invocation,
        Err((text, 0)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err((text, code)) => {
            eprintln!("{text}");
            return ExitCode::from(code);
        }
    };
    crate::telemetry::init();
    let config = match parse(&Vars(Env)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            eprintln!("{}: invalid configuration: {e}", binary.name);
            return ExitCode::from(2);
        }
    };
    match run(invocation, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{}: {e:#}", binary.name);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINARY: Binary = Binary {
        name: "auth-service",
        version: "1.2.3",
        about: "test",
        subcommands: &[Subcommand {
            name: "migrate-passwords",
            about: "hash plaintext passwords",
            flags: &[("--dry-run", "only count")],
        }],
    };

    #[test]
    fn arguments_choose_serving_a_subcommand_or_help() {
        let parse = |args: &[&str]| BINARY.parse(args.iter().copied());
        assert_eq!(parse(&[]), Ok(Invocation::Serve));
        assert_eq!(parse(&["serve"]), Ok(Invocation::Serve));
        assert_eq!(
            parse(&["migrate-passwords", "--dry-run"]),
            Ok(Invocation::Run {
                name: "migrate-passwords",
                flags: vec!["--dry-run"]
            })
        );
        let (help, code) = parse(&["--help"]).unwrap_err();
        assert_eq!(code, 0);
        assert!(help.contains("migrate-passwords [--dry-run]") && help.contains("only count"));
        assert_eq!(
            parse(&["-V"]).unwrap_err(),
            ("auth-service 1.2.3".into(), 0)
        );
        for bad in [
            &["serve", "x"][..],
            &["migrate"],
            &["migrate-passwords", "--force"],
        ] {
            let (text, code) = parse(bad).unwrap_err();
            assert_eq!(code, 2, "{bad:?}");
            assert!(
                text.contains("unknown") && text.contains("Usage:"),
                "{text}"
            );
        }
    }
}
