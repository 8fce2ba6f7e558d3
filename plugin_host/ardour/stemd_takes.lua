ardour {
	["type"]    = "EditorHook",
	name        = "stemd: import takes",
	author      = "stemd",
	description = [[Imports the takes stemd's bridge queued for this session (stemd bridge --insert ardour
--session <this session's folder>): each file goes onto its track at the exact sample of its bar. The
queue is <session folder>/stemd-inbox.jsonl; once a second the hook takes it over (renames it to
stemd-inbox.taken.jsonl, so the bridge starts a new one), imports what it lists a second later and
removes it.]],
}

function signals ()
	local s = LuaSignal.Set ()
	s:add ({ [LuaSignal.LuaTimerDS] = true })
	return s
end

-- Ardour keeps only the bytecode of `factory` (in its ui_scripts file): everything the hook calls is
-- defined inside it.
function factory (params)
	-- one queued take: {"file": "...", "sample": N, "track": "name or number", ...} (one JSON object a line)
	local function json_string (line, key)
		local raw = line:match ('"' .. key .. '"%s*:%s*"(.-[^\\])"') or line:match ('"' .. key .. '"%s*:%s*""') and ""
		if not raw then return nil end
		return (raw:gsub ('\\(["\\/])', '%1'))
	end

	local function json_integer (line, key)
		local n = line:match ('"' .. key .. '"%s*:%s*(%d+)')
		return n and tonumber (n) or nil
	end

	local function parse (text)
		local takes = {}
		for line in text:gmatch ("[^\n]+") do
			local file, sample = json_string (line, "file"), json_integer (line, "sample")
			if file and sample then
				table.insert (takes, { file = file, sample = sample, track = json_string (line, "track") or "" })
			end
		end
		return takes
	end

	local function find_track (name)
		if name == nil or name == "" then return nil end
		local n = tonumber (name)
		local i = 0
		for route in Session:get_tracks ():iter () do
			i = i + 1
			if (n and i == n) or route:name () == name then
				return route:to_track ()
			end
		end
		return nil
	end

	local function import (take)
		local files = C.StringVector ()
		files:push_back (take.file)
		local track = find_track (take.track)
		-- ImportSerializeFiles: Ardour 7.3 honours the track argument with it (ImportDistinctFiles takes
		-- the selected track instead); no such track: a new one, named after the file
		local mode = track and Editing.ImportToTrack or Editing.ImportAsTrack
		Editor:do_import (files, Editing.ImportSerializeFiles, mode, ARDOUR.SrcQuality.SrcBest,
			ARDOUR.MidiTrackNameSource.SMFTrackName, ARDOUR.MidiTempoMapDisposition.SMFTempoIgnore,
			Temporal.timepos_t (take.sample), ARDOUR.PluginInfo (), track or ARDOUR.Track (), false)
		print ("stemd: imported " .. take.file .. " at sample " .. take.sample .. " on " ..
			(track and track:name () or "a new track"))
	end

	local function import_taken (taken)
		local f = io.open (taken, "r")
		if not f then return end
		local text = f:read ("*a")
		f:close ()
		for _, take in ipairs (parse (text)) do
			local ok, err = pcall (import, take)
			if not ok then print ("stemd: could not import " .. take.file .. ": " .. tostring (err)) end
		end
		os.remove (taken)
	end

	local ticks = 0
	return function (signal, ref, ...)
		ticks = ticks + 1
		if ticks < 10 then return end -- LuaTimerDS ticks every 100 ms: look once a second
		ticks = 0
		local inbox = ARDOUR.LuaAPI.build_filename (Session:path (), "stemd-inbox.jsonl")
		local taken = ARDOUR.LuaAPI.build_filename (Session:path (), "stemd-inbox.taken.jsonl")
		-- taken over a second ago: a bridge that had the inbox open then has finished its line
		if ARDOUR.LuaAPI.file_test (taken, ARDOUR.LuaAPI.FileTest.Exists) then
			import_taken (taken)
		elseif ARDOUR.LuaAPI.file_test (inbox, ARDOUR.LuaAPI.FileTest.Exists) then
			os.rename (inbox, taken)
		end
	end
end
