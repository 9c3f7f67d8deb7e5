//! Small helpers shared by the measuring examples (memory, soak).

/// The value of `--name N` on the command line, or `default`.
pub(crate) fn arg(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// The peak resident memory of this process (VmHWM), as the kernel prints it.
pub(crate) fn peak_rss() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_else(|| "unknown".into()))
}
