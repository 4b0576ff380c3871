package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectWriter;
import com.fasterxml.jackson.databind.json.JsonMapper;

/** The Jackson setup shared by headers, manifests and sidecars: strict on read, ordered on write. */
final class Json {
    /** Rejects duplicate keys and anything after the top-level value; objects keep insertion order. */
    static final JsonMapper MAPPER = JsonMapper.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    static final ObjectWriter PRETTY = MAPPER.writerWithDefaultPrettyPrinter();

    private Json() {}

    /** A CRC32C value as 8 lowercase hex digits. */
    static String hex(int crc) {
        String s = Integer.toHexString(crc);
        return "00000000".substring(s.length()) + s;
    }

    /** Parses 8 hex digits back to a CRC32C value, or throws NumberFormatException. */
    static int parseHex(String s) {
        if (s.length() != 8) {
            throw new NumberFormatException("not 8 hex digits: '" + s + "'");
        }
        return Integer.parseUnsignedInt(s, 16);
    }
}
