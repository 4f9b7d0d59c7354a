//! `agentbus key`: a new random key and the `key_sha256` to put in the config instead.

use std::process::ExitCode;

use anyhow::Context;

/// Prints a new 256-bit key (hex) and its SHA-256 for `[[auth.agents]] key_sha256`.
pub fn run() -> anyhow::Result<ExitCode> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).context("the system random number generator failed")?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = agentbus_server::auth::key_sha256(&key);
    let text = format!(
        "key:        {key}\nkey_sha256: {hash}\n\n\
         Give the key to the agent (register `token`, or `Authorization: Bearer`), and put\n\
         the hash in the server's config so that it holds no secret:\n\n\
         [[auth.agents]]\nid = \"my-agent\"\nkey_sha256 = \"{hash}\"\npublish = [\"*\"]\nsubscribe = [\"*\"]\n"
    );
    // A closed pipe (`agentbus key | head -1`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(ExitCode::SUCCESS)
}
