package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.NullNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * A snapshot's manifest.json: what it holds and every file's size and CRC32C, and the format
 * version it was written in (so that the model code can read older model metadata).
 */
record Manifest(int formatVersion, String model, String id, long version, String trigger, long createdUnixMillis,
                JsonNode modelMeta, List<FileEntry> files) {
    static final String FORMAT = "optsidecar-snapshot";
    /** Written now; see package-info for what changed from one version to the next. */
    static final int FORMAT_VERSION = 2;
    static final int OLDEST_FORMAT_VERSION = 1;
    static final String FILE_NAME = "manifest.json";
    static final String CRC_FILE_NAME = "manifest.crc32c";

    /** Plain file names only: no separators, no leading dot, nothing the store uses itself. */
    private static final Pattern SAFE_FILE = Pattern.compile("[A-Za-z0-9_][A-Za-z0-9._-]{0,127}");

    record FileEntry(String name, long bytes, int crc32c, int tensors) {}

    Manifest {
        files = List.copyOf(files);
        modelMeta = modelMeta == null ? NullNode.getInstance() : modelMeta;
    }

    /** Null if {@code name} may be a file in a snapshot, else why not. */
    static String fileNameProblem(String name) {
        if (!SAFE_FILE.matcher(name).matches()) {
            return "file name '" + name + "' must be 1-128 characters of letters, digits, '.', '_' and '-',"
                    + " not starting with '.' or '-'";
        }
        if (name.equals(FILE_NAME) || name.equals(CRC_FILE_NAME)) {
            return "file name '" + name + "' is reserved";
        }
        return null;
    }

    FileEntry file(String name) {
        for (FileEntry f : files) {
            if (f.name().equals(name)) {
                return f;
            }
        }
        return null;
    }

    byte[] toJson() throws IOException {
        ObjectNode root = Json.MAPPER.createObjectNode();
        root.put("format", FORMAT);
        root.put("format_version", formatVersion);
        root.put("model", model);
        root.put("id", id);
        root.put("version", version);
        root.put("trigger", trigger);
        root.put("created_unix_millis", createdUnixMillis);
        root.set("model_meta", modelMeta);
        ObjectNode filesNode = root.putObject("files");
        for (FileEntry f : files) {
            ObjectNode e = filesNode.putObject(f.name());
            e.put("bytes", f.bytes());
            e.put("crc32c", Json.hex(f.crc32c()));
            e.put("tensors", f.tensors());
        }
        byte[] json = Json.PRETTY.writeValueAsBytes(root);
        byte[] withNewline = new byte[json.length + 1];
        System.arraycopy(json, 0, withNewline, 0, json.length);
        withNewline[json.length] = '\n';
        return withNewline;
    }

    /** Thrown by {@link #parse} with what is wrong, for a snapshot's problem string. */
    static final class Invalid extends Exception {
        Invalid(String message) {
            super(message, null, false, false);
        }
    }

    static Manifest parse(byte[] json) throws Invalid {
        JsonNode root;
        try {
            root = Json.MAPPER.readTree(json);
        } catch (JacksonException e) {
            throw new Invalid("not valid JSON (" + e.getOriginalMessage() + ")");
        } catch (IOException e) {
            throw new Invalid("unreadable (" + e.getMessage() + ")");
        }
        if (root == null || !root.isObject()) {
            throw new Invalid("not a JSON object");
        }
        if (!FORMAT.equals(text(root, "format"))) {
            throw new Invalid("format is not " + FORMAT);
        }
        long formatVersion = number(root, "format_version");
        if (formatVersion < OLDEST_FORMAT_VERSION || formatVersion > FORMAT_VERSION) {
            throw new Invalid("unsupported format_version " + formatVersion);
        }
        String model = text(root, "model");
        String id = text(root, "id");
        if (model.isEmpty() || id.isEmpty()) {
            throw new Invalid("model and id must not be empty");
        }
        long version = number(root, "version");
        String trigger = text(root, "trigger");
        long created = number(root, "created_unix_millis");
        JsonNode meta = root.get("model_meta");
        if (meta == null) {
            throw new Invalid("model_meta is missing");
        }
        JsonNode filesNode = root.get("files");
        if (filesNode == null || !filesNode.isObject()) {
            throw new Invalid("files is missing or not an object");
        }
        List<FileEntry> files = new ArrayList<>();
        for (Map.Entry<String, JsonNode> e : filesNode.properties()) {
            String name = e.getKey();
            String problem = fileNameProblem(name);
            if (problem != null) {
                throw new Invalid(problem);
            }
            JsonNode f = e.getValue();
            if (!f.isObject()) {
                throw new Invalid("entry for " + name + " is not an object");
            }
            long bytes = number(f, "bytes");
            long tensors = number(f, "tensors");
            if (bytes < 0 || tensors < 0 || tensors > Integer.MAX_VALUE) {
                throw new Invalid("entry for " + name + " has a negative or huge size");
            }
            int crc;
            try {
                crc = Json.parseHex(text(f, "crc32c"));
            } catch (NumberFormatException ex) {
                throw new Invalid("entry for " + name + " has a malformed crc32c");
            }
            files.add(new FileEntry(name, bytes, crc, (int) tensors));
        }
        return new Manifest((int) formatVersion, model, id, version, trigger, created, meta, files);
    }

    private static String text(JsonNode node, String field) throws Invalid {
        JsonNode v = node.get(field);
        if (v == null || !v.isTextual()) {
            throw new Invalid(field + " is missing or not a string");
        }
        return v.textValue();
    }

    private static long number(JsonNode node, String field) throws Invalid {
        JsonNode v = node.get(field);
        if (v == null || !v.isIntegralNumber() || !v.canConvertToLong()) {
            throw new Invalid(field + " is missing or not an integer");
        }
        return v.longValue();
    }
}
