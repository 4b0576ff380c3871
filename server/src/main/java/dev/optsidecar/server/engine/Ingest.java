package dev.optsidecar.server.engine;

/**
 * What copying one gradient chunk into place found.
 *
 * @param firstNonFinite element index of the first NaN or Inf, or -1 if all values are finite
 * @param sumOfSquares   the chunk's contribution to the squared global gradient norm (when finite)
 */
public record Ingest(long firstNonFinite, double sumOfSquares) {}
