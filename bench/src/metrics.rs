//! Reading counters from a service's Prometheus exposition.

use anyhow::Context;

/// The value of the series `name` (with its labels, if any, exactly as
/// exposed) at `base`/metrics.
pub async fn counter(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    value(&text, name).with_context(|| format!("no series {name} at {base}/metrics"))
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_plain_and_labelled_series() {
        let text =
            "# HELP x\nkom_a_total 3\nkom_a_total_other 9\nkom_e_total{event=\"watchdog\"} 12\n";
        assert_eq!(super::value(text, "kom_a_total"), Some(3.0));
        assert_eq!(
            super::value(text, "kom_e_total{event=\"watchdog\"}"),
            Some(12.0)
        );
        assert_eq!(super::value(text, "kom_missing"), None);
    }
}
