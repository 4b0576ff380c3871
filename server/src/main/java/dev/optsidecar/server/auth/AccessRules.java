package dev.optsidecar.server.auth;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * The tokens of a token file, checked strictly:
 * <pre>
 * {"tokens": [{"name": "ci", "sha256": "&lt;64 hex digits&gt;", "role": "reader" | "trainer" | "admin",
 *              "models": ["glob", ...]}]}
 * </pre>
 * The file holds SHA-256 digests of the tokens, never the tokens. A token is looked up by its
 * digest, compared with every entry's in constant time.
 */
public final class AccessRules {
    private static final ObjectMapper JSON = new ObjectMapper()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
    private static final Set<String> FIELDS = Set.of("name", "sha256", "role", "models");
    private static final Pattern SHA256_HEX = Pattern.compile("[0-9a-fA-F]{64}");

    private record Entry(byte[] digest, Principal principal) {}

    private final List<Entry> entries;

    private AccessRules(List<Entry> entries) {
        this.entries = List.copyOf(entries);
    }

    /** How many tokens the file lists. */
    public int size() {
        return entries.size();
    }

    /**
     * The token file's rules.
     *
     * @throws IllegalArgumentException saying what is wrong and, for an entry, which one ({@code tokens[2] ("ci"): ...})
     */
    public static AccessRules parse(byte[] json) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (JsonProcessingException e) {
            // Jackson's message may repeat a location with a placeholder for the source: keep its words.
            String why = e.getOriginalMessage().replaceAll(" ?\\(start marker at \\[Source: [^\\]]*\\]\\)", "");
            throw new IllegalArgumentException("not valid JSON (" + why + (e.getLocation() == null ? ""
                    : ", line " + e.getLocation().getLineNr() + " column " + e.getLocation().getColumnNr()) + ")");
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException("cannot be read (" + e.getMessage() + ")");
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("must be a JSON object {\"tokens\": [...]}");
        }
        for (Iterator<String> names = root.fieldNames(); names.hasNext(); ) {
            String field = names.next();
            if (!field.equals("tokens")) {
                throw new IllegalArgumentException("unknown field '" + field + "' (the file has only \"tokens\")");
            }
        }
        JsonNode tokens = root.get("tokens");
        if (tokens == null || !tokens.isArray()) {
            throw new IllegalArgumentException("\"tokens\" must be a list of {name, sha256, role, models}");
        }
        List<Entry> entries = new ArrayList<>();
        List<String> names = new ArrayList<>();
        for (int i = 0; i < tokens.size(); i++) {
            Entry entry = entry(tokens.get(i), "tokens[" + i + "]");
            String where = "tokens[" + i + "] (\"" + entry.principal().name() + "\")";
            int sameName = names.indexOf(entry.principal().name());
            if (sameName >= 0) {
                throw new IllegalArgumentException(where + ": name is already the name of tokens[" + sameName + "]");
            }
            for (int j = 0; j < entries.size(); j++) {
                if (MessageDigest.isEqual(entries.get(j).digest(), entry.digest())) {
                    throw new IllegalArgumentException(where + ": sha256 is the digest of the same token as tokens["
                            + j + "] (\"" + entries.get(j).principal().name() + "\")");
                }
            }
            names.add(entry.principal().name());
            entries.add(entry);
        }
        return new AccessRules(entries);
    }

    private static Entry entry(JsonNode node, String where) {
        if (node == null || !node.isObject()) {
            throw new IllegalArgumentException(where + ": must be an object {name, sha256, role, models}");
        }
        JsonNode nameNode = node.get("name");
        if (nameNode == null || !nameNode.isTextual() || nameNode.asText().isBlank()) {
            throw new IllegalArgumentException(where + ": name must be a non-empty string");
        }
        String name = nameNode.asText();
        where = where + " (\"" + name + "\")";
        for (Iterator<String> fields = node.fieldNames(); fields.hasNext(); ) {
            String field = fields.next();
            if (!FIELDS.contains(field)) {
                throw new IllegalArgumentException(where + ": unknown field '" + field
                        + "' (an entry has name, sha256, role and models)");
            }
        }
        JsonNode digestNode = node.get("sha256");
        if (digestNode == null || !digestNode.isTextual() || !SHA256_HEX.matcher(digestNode.asText()).matches()) {
            throw new IllegalArgumentException(where + ": sha256 must be the token's SHA-256 digest as 64 hex digits"
                    + " (printf %s \"$TOKEN\" | sha256sum)");
        }
        JsonNode roleNode = node.get("role");
        Role role = roleNode != null && roleNode.isTextual() ? Role.fromLabel(roleNode.asText()) : null;
        if (role == null) {
            throw new IllegalArgumentException(where + ": role must be \"reader\", \"trainer\" or \"admin\""
                    + (roleNode == null ? "" : ", not " + roleNode));
        }
        JsonNode modelsNode = node.get("models");
        if (modelsNode == null || !modelsNode.isArray() || modelsNode.isEmpty()) {
            throw new IllegalArgumentException(where + ": models must be a non-empty list of model name globs"
                    + " (\"*\" for every model)");
        }
        List<String> globs = new ArrayList<>();
        for (int i = 0; i < modelsNode.size(); i++) {
            JsonNode glob = modelsNode.get(i);
            if (!glob.isTextual() || glob.asText().isEmpty()) {
                throw new IllegalArgumentException(where + ": models[" + i + "] must be a non-empty string");
            }
            globs.add(glob.asText());
        }
        return new Entry(HexFormat.of().parseHex(digestNode.asText()), new Principal(name, role, new ModelGlobs(globs)));
    }

    /** The principal whose digest is the token's, or null when none is. */
    public Principal find(String token) {
        byte[] digest = sha256(token);
        Principal found = null;
        for (Entry e : entries) { // every entry compared, so the time taken does not tell which matched
            if (MessageDigest.isEqual(e.digest(), digest)) {
                found = e.principal();
            }
        }
        return found;
    }

    static byte[] sha256(String token) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(token.getBytes(StandardCharsets.UTF_8));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every Java runtime has SHA-256", e);
        }
    }
}
